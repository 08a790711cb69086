//! Key files: a cluster key as `tribe keygen` prints it, alone in a file.

use std::path::Path;

use crate::crypto::SecretKey;
use crate::error::{Error, Result};
use crate::small_file::{read_file, Unread};

/// The largest key file read: a key is 44 characters, and a file much
/// longer holds something else.
pub const MAX_KEY_FILE: u64 = 4096;

/// Reads the key in a key file (surrounding whitespace ignored). The file
/// must be a regular file (a link to one is followed): a FIFO or a device
/// is refused at once, not waited on or read without end. Errors:
/// [`Error::Io`] when it cannot be read (missing, no permission),
/// [`Error::Config`] when it is not a regular file or is larger than
/// [`MAX_KEY_FILE`], [`Error::InvalidArgument`] when it holds no key. The
/// key is never quoted.
pub fn read(path: &Path) -> Result<SecretKey> {
    let bytes = read_file(path, MAX_KEY_FILE).map_err(|why| match why {
        Unread::Missing => Error::Io(format!(
            "cannot read key file {}: it does not exist",
            path.display()
        )),
        Unread::Failed(e) => Error::Io(format!("cannot read key file {}: {e}", path.display())),
        Unread::NotRegular => Error::Config(format!(
            "key file {} is not a regular file (a FIFO or a device is not read)",
            path.display()
        )),
        Unread::TooLarge => Error::Config(format!(
            "key file {} is larger than {MAX_KEY_FILE} bytes: it must hold the key alone, \
             as `tribe keygen > FILE` writes it",
            path.display()
        )),
    })?;
    let bytes = zeroize::Zeroizing::new(bytes);
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        Error::InvalidArgument(format!("key file {}: not UTF-8 text", path.display()))
    })?;
    SecretKey::from_base64(text)
        .map_err(|e| Error::InvalidArgument(format!("key file {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tribe-keyfile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_key_file_gives_its_key_and_odd_files_are_refused_at_once() {
        let dir = scratch("odd");
        let key = SecretKey::generate();
        let good = dir.join("good");
        std::fs::write(&good, format!("{}\n", key.to_base64())).unwrap();
        assert_eq!(read(&good).unwrap().id(), key.id());
        // A FIFO without a writer would block the open or the read for good.
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let zero = std::path::Path::new("/dev/zero");
        for odd in [fifo.as_path(), zero] {
            let err = read(odd).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{err}");
            assert!(err.to_string().contains("not a regular file"), "{err}");
        }
        let big = dir.join("big");
        std::fs::write(&big, vec![b'A'; 5000]).unwrap();
        assert!(read(&big)
            .unwrap_err()
            .to_string()
            .contains("larger than 4096"));
        let junk = dir.join("junk");
        std::fs::write(&junk, b"not a key").unwrap();
        assert!(matches!(read(&junk), Err(Error::InvalidArgument(_))));
        assert!(matches!(read(&dir.join("missing")), Err(Error::Io(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
