//! Reading a small local file (a data dir's file, a key file) that may be
//! something else: a FIFO in its place blocked a start for good (deaf to
//! signals), and a link to a device was read without end.

use std::path::Path;

/// Why a file was not read.
pub(crate) enum Unread {
    Missing,
    TooLarge,
    NotRegular,
    Failed(std::io::Error),
}

/// Reads a regular file (links followed) of up to `max` bytes, without
/// blocking on a FIFO or reading a device.
pub(crate) fn read_file(path: &Path, max: u64) -> std::result::Result<Vec<u8>, Unread> {
    use std::io::Read as _;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    // A terminal opened here would become the controlling terminal of a
    // process that has none (a daemon), before it is refused.
    std::os::unix::fs::OpenOptionsExt::custom_flags(
        &mut options,
        libc::O_NONBLOCK | libc::O_NOCTTY,
    );
    let file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Unread::Missing,
        _ => Unread::Failed(e),
    })?;
    let meta = file.metadata().map_err(Unread::Failed)?;
    if !meta.is_file() {
        return Err(Unread::NotRegular);
    }
    if meta.len() > max {
        return Err(Unread::TooLarge);
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(Unread::Failed)?;
    if bytes.len() as u64 > max {
        return Err(Unread::TooLarge);
    }
    Ok(bytes)
}
