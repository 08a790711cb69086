//! The data directory: where a node keeps what it needs to rejoin after a
//! restart (see [`crate::engine::durable`]). Files are written to a temporary
//! name and renamed, so a crash mid-write leaves the previous copy intact.

use std::path::{Path, PathBuf};

use crate::engine::durable::Durable;
use crate::error::{Error, Result};

/// File name of the durable state inside the data directory.
pub const STATE_FILE: &str = "node-state.json";
/// A state file larger than this is refused as corrupt.
const MAX_STATE_FILE: u64 = 64 * 1024 * 1024;

/// Creates the directory (owner-only) when missing.
pub fn prepare(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Config(format!("cannot create data dir {}: {e}", dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// Reads the durable state kept by an earlier run; `None` on a first start.
/// A file that cannot be read or parsed is an error naming the file, never
/// silently ignored: starting without it would quietly drop memberships.
pub fn load(dir: &Path) -> Result<Option<Durable>> {
    let path = state_path(dir);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Config(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    if meta.len() > MAX_STATE_FILE {
        return Err(Error::Config(format!(
            "{} is larger than {MAX_STATE_FILE} bytes; remove it to start afresh",
            path.display()
        )));
    }
    let text = std::fs::read(&path)
        .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_slice(&text).map(Some).map_err(|e| {
        Error::Config(format!(
            "{} is not a valid state file ({e}); remove it to start afresh",
            path.display()
        ))
    })
}

/// Writes the durable state atomically.
pub fn save(dir: &Path, durable: &Durable) -> std::io::Result<()> {
    let path = state_path(dir);
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let text = serde_json::to_vec_pretty(durable).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tribe-datadir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn first_start_has_nothing_and_a_save_reads_back() {
        let dir = scratch("roundtrip");
        prepare(&dir).unwrap();
        assert_eq!(load(&dir).unwrap(), None);
        let durable = Durable {
            peers: vec!["127.0.0.1:7946".parse().unwrap()],
            records: Vec::new(),
        };
        save(&dir, &durable).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(durable));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = scratch("corrupt");
        prepare(&dir).unwrap();
        std::fs::write(dir.join(STATE_FILE), b"{ not json").unwrap();
        let err = load(&dir).unwrap_err();
        assert!(err.to_string().contains(STATE_FILE), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
