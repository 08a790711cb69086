//! The data directory: where a node keeps what it needs to rejoin after a
//! restart (known peers, memberships by hand, the keyring). Files are
//! written to a temporary
//! name and renamed, so a crash mid-write leaves the previous copy intact.

use std::path::{Path, PathBuf};

use crate::crypto::{KeyId, Keyring, SecretKey};
use crate::engine::durable::Durable;
use crate::error::{Error, Result};
use crate::small_file::{read_file, Unread};

/// File name of the durable state inside the data directory.
pub const STATE_FILE: &str = "node-state.json";
/// File name of the keyring (mode 0600) inside the data directory.
pub const KEYRING_FILE: &str = "keyring.json";
/// File name of the lock held by the node using the data directory.
pub const LOCK_FILE: &str = "lock";
/// The id (not the key) of the primary key configured at the last start.
pub const CONFIGURED_KEY_FILE: &str = "configured-key";
/// A state file larger than this is refused as corrupt (the whole
/// replicated state is kept, and its records are bounded by the limits).
const MAX_STATE_FILE: u64 = 1024 * 1024 * 1024;

/// Largest keyring file (8 keys and the removed ids take a few KiB) or
/// configured-key file read.
const MAX_SMALL_FILE: u64 = 1024 * 1024;

/// A file an earlier run kept, or `None` on a first start; each failure an
/// error naming the file.
fn read_kept(path: &Path, max: u64) -> Result<Option<Vec<u8>>> {
    match read_file(path, max) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(Unread::Missing) => absent(path).map(|()| None),
        Err(Unread::TooLarge) => Err(Error::Config(format!(
            "{} is larger than {max} bytes; remove it to start afresh",
            path.display()
        ))),
        Err(Unread::NotRegular) => Err(not_regular(path)),
        Err(Unread::Failed(e)) => Err(Error::Io(format!("cannot read {}: {e}", path.display()))),
    }
}

fn not_regular(path: &Path) -> Error {
    Error::Config(format!(
        "{} is not a regular file; remove it",
        path.display()
    ))
}

fn hard_linked(path: &Path) -> Error {
    Error::Config(format!(
        "{} has other hard links; remove it (the node makes its lock file itself)",
        path.display()
    ))
}

/// Refuses a lock file that is not a plain file: a FIFO would not open (no
/// reader) and say so obscurely, and a link (symbolic or hard) would have
/// the start create or chmod the file it points to, wherever that is (a
/// member of the dir's group could have a node running as root chmod any
/// file).
fn refuse_odd_lock(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(Error::Config(format!(
            "{} is a symbolic link; remove it (the node makes its lock file itself)",
            path.display()
        ))),
        Ok(m) if !m.is_file() => Err(not_regular(path)),
        Ok(m) if std::os::unix::fs::MetadataExt::nlink(&m) > 1 => Err(hard_linked(path)),
        _ => Ok(()),
    }
}

/// An exclusive lock on a data directory, released when dropped (or when
/// the process dies, so a crash leaves no stale lock behind).
#[derive(Debug)]
pub struct DirLock {
    /// Listed so that a forked child closes its copy (it would keep the
    /// lock after this process died); dropped first, before the close.
    _listed: crate::ffi::fork_locks::Listed,
    lock: Option<nix::fcntl::Flock<std::fs::File>>,
    /// The process that took the lock (see the drop).
    pid: u32,
    /// The lock file's identity, to find it gone or replaced later.
    held: LockId,
}

/// Device and inode of the lock file this node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockId(u64, u64);

impl Drop for DirLock {
    fn drop(&mut self) {
        // A forked child's copy is left alone: unlocking would take the
        // parent's lock (the child shares it), and its descriptor was
        // closed in the child at the fork (its number may be reused since).
        if self.pid != std::process::id() {
            std::mem::forget(self.lock.take());
        }
    }
}

impl DirLock {
    /// The identity of the lock file held, for [`still_held`].
    pub fn id(&self) -> LockId {
        self.held
    }
}

/// Whether `dir`'s lock file is still the one this node locked: a
/// directory removed (or replaced) under a running node may have been
/// taken by another since, and the two must not write into one directory.
pub fn still_held(dir: &Path, held: LockId) -> std::io::Result<()> {
    let now = std::fs::metadata(dir.join(LOCK_FILE))
        .ok()
        .map(|m| lock_id(&m));
    if now == Some(held) {
        return Ok(());
    }
    Err(std::io::Error::other(format!(
        "the data dir {} was removed or replaced while this node ran (its lock file is not the \
         one this node holds): not written into, so that it does not mix with another node's; \
         restart the node",
        dir.display()
    )))
}

fn lock_id(meta: &std::fs::Metadata) -> LockId {
    use std::os::unix::fs::MetadataExt;
    LockId(meta.dev(), meta.ino())
}

/// Takes the data directory's lock; fails when another node holds it, so
/// two agents never write the same directory.
pub fn lock(dir: &Path) -> Result<DirLock> {
    let path = dir.join(LOCK_FILE);
    refuse_odd_lock(&path)?;
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(false).write(true);
    // Not blocked by a FIFO in its place (refused below), and no link
    // followed: one put there since the look above would be made or
    // chmodded wherever it points.
    std::os::unix::fs::OpenOptionsExt::custom_flags(
        &mut options,
        libc::O_NONBLOCK | libc::O_NOFOLLOW,
    );
    // Only this user may open it: anyone who can (read access is enough)
    // can take the lock and keep the node from starting.
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options
        .open(&path)
        .map_err(|e| Error::Io(format!("cannot open {}: {e}", path.display())))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(not_regular(&path));
    }
    // A hard link to a file elsewhere would be chmodded below, as a
    // symbolic one would have been.
    if std::os::unix::fs::MetadataExt::nlink(&meta) > 1 {
        return Err(hard_linked(&path));
    }
    // One made before (under another umask, or by an older build); only
    // this user's own (root's is not chmodded into another user's file).
    let mine = std::os::unix::fs::MetadataExt::uid(&meta) == nix::unistd::geteuid().as_raw();
    if mine && std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077 != 0 {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = file.set_permissions(std::fs::Permissions::from_mode(0o600));
    }
    let held = lock_id(&meta);
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(DirLock {
            _listed: crate::ffi::fork_locks::list(std::os::fd::AsRawFd::as_raw_fd(&*lock)),
            lock: Some(lock),
            pid: std::process::id(),
            held,
        }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(Error::Config(format!(
            "data dir {} is in use by another node",
            dir.display()
        ))),
        Err((_, e)) => Err(Error::Io(format!("cannot lock {}: {e}", path.display()))),
    }
}

/// What a start would refuse in an existing data directory's setup (one
/// any user may write, a state file that is not one), found without
/// creating or changing anything: for a configuration check before the
/// start. A missing directory passes (the start creates it), and so does
/// one another node holds now: a daemon's configuration check runs while
/// the daemon does.
pub fn check(dir: &Path, name: &str) -> Result<()> {
    if !is_directory(dir)? {
        return Ok(());
    }
    refuse_world_writable(dir)?;
    refuse_unlistable(dir)?;
    refuse_odd_lock(&dir.join(LOCK_FILE))?;
    read_kept(&dir.join(CONFIGURED_KEY_FILE), MAX_SMALL_FILE)?;
    load_for(dir, name).map(drop)
}

/// What a start of node `name` takes from `dir`, read before anything in
/// it is written: a refused start (another node's directory, a state or
/// keyring file that is not one) must leave it as it was, keyring and all.
pub fn load_for(dir: &Path, name: &str) -> Result<Option<Durable>> {
    let durable = load(dir)?;
    if let Some(writer) = durable.as_ref().map(|d| &d.name) {
        if !writer.is_empty() && writer != name {
            return Err(Error::Config(format!(
                "the data dir {} belongs to node {writer:?}, not {name:?}: start it under that name, or give this node a data dir of its own",
                dir.display(),
            )));
        }
    }
    read_keyring_file(dir)?;
    Ok(durable)
}

/// The node a data dir belongs to: the name its state was kept under, or
/// `None` for a dir with no state (or one from before names were kept).
pub fn owner(dir: &Path) -> Result<Option<String>> {
    Ok(load(dir)?.map(|d| d.name).filter(|n| !n.is_empty()))
}

/// Creates the directory, owner-only, when missing. An existing directory
/// keeps its mode (it may be shared with other programs; the files written
/// in it are owner-only either way), but one that any user may write is
/// refused: they could put a keyring or a state of their own in place.
/// (Group-writable is allowed: with a group per user, as many systems
/// make them, that group is the owner.)
pub fn prepare(dir: &Path) -> Result<()> {
    if is_directory(dir)? {
        refuse_world_writable(dir)?;
        return refuse_unlistable(dir);
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| Error::Io(format!("cannot create data dir {}: {e}", dir.display())))
}

/// Refuses a data dir this process cannot list, naming the dir, its owner
/// and mode (a file inside it would be named instead, as if it were the
/// one at fault).
fn refuse_unlistable(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let Err(e) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let whose = std::fs::metadata(dir)
        .map(|m| format!(" (owner uid {}, mode {:o})", m.uid(), m.mode() & 0o7777))
        .unwrap_or_default();
    Err(Error::Io(format!(
        "cannot read data dir {}{whose}: {e}",
        dir.display()
    )))
}

/// Refuses a data dir this process cannot write in (a directory made
/// read-only after a first run, whose lock file still opens): the node
/// would start and save nothing. Called with the dir locked, so the file it
/// writes and removes is this node's alone.
pub fn refuse_unwritable(dir: &Path) -> Result<()> {
    let probe = dir.join("write-check.tmp");
    // One a crash left between the two steps.
    let _ = std::fs::remove_file(&probe);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|_| std::fs::remove_file(&probe));
    match written {
        Ok(()) => Ok(()),
        // Not allowed, for good: refused.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EACCES | libc::EPERM | libc::EROFS)
            ) =>
        {
            Err(Error::Io(format!(
                "cannot write in data dir {}: {e}",
                dir.display()
            )))
        }
        // A full disk (or quota) may pass: a monitoring agent still starts,
        // and retries its saves (warning) until they succeed.
        Err(e) => {
            tracing::warn!(
                "cannot write in data dir {} now ({e}); the node starts and retries its saves",
                dir.display()
            );
            Ok(())
        }
    }
}

/// Whether `dir` is a directory; false when nothing is there (the start
/// creates it); an error for a file, or a link to nothing, in its place.
fn is_directory(dir: &Path) -> Result<bool> {
    if dir.is_dir() {
        return Ok(true);
    }
    if dir.exists() {
        return Err(Error::Config(format!(
            "data dir {} is not a directory",
            dir.display()
        )));
    }
    if std::fs::symlink_metadata(dir).is_ok() {
        let looped = std::fs::metadata(dir).is_err_and(|e| e.raw_os_error() == Some(libc::ELOOP));
        return Err(Error::Config(format!(
            "data dir {} is a link {}",
            dir.display(),
            if looped {
                "in a loop of links"
            } else {
                "to a directory that does not exist"
            }
        )));
    }
    Ok(false)
}

fn refuse_world_writable(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(dir)
            .map_err(|e| Error::Io(format!("cannot read data dir {}: {e}", dir.display())))?;
        let mode = meta.permissions().mode();
        if mode & 0o002 != 0 {
            return Err(Error::Config(format!(
                "data dir {} is writable by every user (mode {:o}): another user could \
                 replace its keyring or state; chmod o-w it",
                dir.display(),
                mode & 0o7777
            )));
        }
        // Its owner may change its mode, and so its files: this user or
        // root, who may anyway.
        let owner = std::os::unix::fs::MetadataExt::uid(&meta);
        let me = nix::unistd::geteuid().as_raw();
        if owner != me && owner != 0 {
            return Err(Error::Config(format!(
                "data dir {} belongs to another user (uid {owner}, this process runs as \
                 uid {me}), who could replace its keyring or state; chown it",
                dir.display()
            )));
        }
        if mode & 0o020 != 0 {
            tracing::warn!(
                data_dir = %dir.display(),
                "the data dir is writable by its group (mode {:o}): its members could replace \
                 its keyring or state; chmod g-w it unless they are trusted",
                mode & 0o7777
            );
        }
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
    let Some(text) = read_kept(&path, MAX_STATE_FILE)? else {
        return Ok(None);
    };
    serde_json::from_slice(&text).map(Some).map_err(|e| {
        Error::Config(format!(
            "{} is not a valid state file ({e}); remove it to start afresh",
            path.display()
        ))
    })
}

/// A file of the data dir that is not there: a first start, unless a link
/// stands in its place whose target is gone (a volume not mounted, say),
/// which must not pass for one (the state or the keyring would be lost).
fn absent(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Err(Error::Config(format!(
            "{} is a link to a file that does not exist",
            path.display()
        ))),
        Err(_) => Ok(()),
    }
}

/// Writes the durable state atomically.
pub fn save(dir: &Path, durable: &Durable) -> std::io::Result<()> {
    let text = serde_json::to_vec(durable).map_err(std::io::Error::other)?;
    write_private(dir, STATE_FILE, &text)
}

/// Writes `dir/name` atomically, readable by the owner only (a temporary file renamed over it). Each
/// error names the file and the step that failed, so that an operator
/// knows where to look (a leftover `name.tmp` directory, a full disk).
fn write_private(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let said = |what: String| {
        move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"))
    };
    let (path, tmp) = (dir.join(name), dir.join(format!("{name}.tmp")));
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&tmp)
        .map_err(said(format!("cannot create {}", tmp.display())))?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(said(format!("cannot write {}", tmp.display())))
        .and_then(|()| {
            std::fs::rename(&tmp, &path).map_err(said(format!(
                "cannot rename {} to {}",
                tmp.display(),
                path.display()
            )))
        });
    if let Err(e) = written {
        // Not left behind for an operator to wonder about (a full disk).
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename itself must reach the disk too, or a power loss can bring
    // back the previous file (an old keyring, say).
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(said(format!("cannot sync {}", dir.display())))
}

/// How many ids of removed keys the keyring file remembers.
const MAX_REMOVED_IDS: usize = 64;

/// The keyring file: base64 keys and which one is primary.
#[derive(serde::Serialize, serde::Deserialize)]
struct KeyringFile {
    primary: String,
    keys: Vec<String>,
    /// Ids of keys that left this node's ring while it ran (a cluster-wide
    /// `remove`), oldest first: a configured key among them is not
    /// installed again at a restart, whatever the key file says.
    #[serde(default)]
    removed: Vec<String>,
    /// The ids of `primary` and then of `keys`: a key damaged on disk (a
    /// flipped bit is another valid key) is found, not taken for another.
    /// Absent in files written before it.
    #[serde(default)]
    ids: Vec<String>,
}

/// The keys' text is wiped when the file's value goes: a removed key must
/// not stay readable in the process's memory (a core dump, swap).
impl Drop for KeyringFile {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        self.primary.zeroize();
        self.keys.iter_mut().for_each(|k| k.zeroize());
    }
}

/// Writes the keyring (file mode 0600). Keys the file held and `ring`
/// does not were removed: their ids are remembered (the last 64), so a
/// restart never installs them again from a key file.
pub fn save_keyring(dir: &Path, ring: &Keyring) -> std::io::Result<()> {
    let ids = ring.ids();
    let mut removed = Vec::new();
    match read_keyring_file(dir) {
        Ok(Some((before, mut was_removed))) => {
            was_removed.extend(before.ids());
            for id in was_removed {
                if !ids.contains(&id) && !removed.contains(&id) {
                    removed.push(id);
                }
            }
        }
        Ok(None) => {}
        // Written over, the memory of removed keys would be lost: the
        // caller tries again (the runtime each second).
        Err(Error::Io(e)) => return Err(std::io::Error::other(e)),
        // Not a keyring file any more (edited by hand): the ring in use is
        // what counts; what the file remembered is gone with it.
        Err(e) => tracing::warn!(error = %e, "rewriting a keyring file that could not be read"),
    }
    let skip = removed.len().saturating_sub(MAX_REMOVED_IDS);
    let file = KeyringFile {
        primary: ring.primary().to_base64(),
        keys: ring.keys().iter().map(SecretKey::to_base64).collect(),
        removed: removed.iter().skip(skip).map(KeyId::to_string).collect(),
        ids: std::iter::once(ring.primary())
            .chain(ring.keys())
            .map(|k| k.id().to_string())
            .collect(),
    };
    let text =
        zeroize::Zeroizing::new(serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?);
    write_private(dir, KEYRING_FILE, &text)
}

/// Reads the keyring kept by an earlier run, if any. Errors name the file
/// but never quote its content.
pub fn load_keyring(dir: &Path) -> Result<Option<Keyring>> {
    Ok(read_keyring_file(dir)?.map(|(ring, _)| ring))
}

/// The kept keyring and the ids of the keys removed from it.
fn read_keyring_file(dir: &Path) -> Result<Option<(Keyring, Vec<KeyId>)>> {
    let path = dir.join(KEYRING_FILE);
    let Some(text) = read_kept(&path, MAX_SMALL_FILE)?.map(zeroize::Zeroizing::new) else {
        return Ok(None);
    };
    let bad = |why: String| {
        Error::Config(format!(
            "{} is not a valid keyring file: {why}",
            path.display()
        ))
    };
    let file: KeyringFile =
        serde_json::from_slice(&text).map_err(|_| bad("not the expected JSON".into()))?;
    let primary = SecretKey::from_base64(&file.primary).map_err(|e| bad(e.to_string()))?;
    let keys = file
        .keys
        .iter()
        .map(|k| SecretKey::from_base64(k).map_err(|e| bad(e.to_string())))
        .collect::<Result<Vec<_>>>()?;
    if !file.ids.is_empty() {
        let found: Vec<String> = std::iter::once(&primary)
            .chain(&keys)
            .map(|k| k.id().to_string())
            .collect();
        if found != file.ids {
            return Err(bad(
                "a key does not match the id written with it (the file is damaged); \
                 restore it, or remove it to start with the configured key"
                    .into(),
            ));
        }
    }
    let mut ring = Keyring::new(primary);
    for key in keys {
        ring.install(key).map_err(|e| bad(e.to_string()))?;
    }
    // Only a memory that hardens revocation: an entry spoilt by hand is
    // left out, not a reason to refuse the keys.
    let removed: Vec<KeyId> = file
        .removed
        .iter()
        .filter_map(|id| id.parse().ok())
        .collect();
    // One line for them all, however many.
    let spoilt = file.removed.len() - removed.len();
    if spoilt > 0 {
        tracing::warn!(file = %path.display(), entries = spoilt, "entries of `removed` that are not key ids (8 hex digits) are left out");
    }
    Ok(Some((ring, removed)))
}

/// Warns when the kept keyring could be read by other users (a backup
/// put back with the wrong mode): the next save writes it 0600, silently,
/// and its keys may have been read meanwhile.
fn warn_if_exposed(path: &Path) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            "{} was readable by other users (mode {mode:o}); it is written 0600 from now on, but its \
             keys may have been read: rotate them (`tribe keys install`, `use`, `remove`)",
            path.display()
        );
    }
}

/// The keyring to start with: the kept one (the cluster may have rotated
/// keys since the configured key was written down) plus the configured key.
/// A configured primary that differs from the one configured at the last
/// start is the operator's newer word (the cluster rotated while this node
/// was away): it becomes the primary, or the node would seal with a key the
/// cluster may have removed and stay locked out.
pub fn merge_keyring(dir: &Path, configured: Option<Keyring>) -> Result<Option<Keyring>> {
    let (kept, removed) = match read_keyring_file(dir)? {
        Some((ring, removed)) => (Some(ring), removed),
        None => (None, Vec::new()),
    };
    warn_if_exposed(&dir.join(KEYRING_FILE));
    // Refused as the other files are when it is no file; unreadable text
    // counts as no key given last time.
    let last = read_kept(&dir.join(CONFIGURED_KEY_FILE), MAX_SMALL_FILE)?
        .and_then(|b| String::from_utf8(b).ok());
    let last = last.as_deref().map(str::trim);
    // Whether the configured primary is held, so that the next start may
    // count it as "given last time" (a full kept ring may refuse it).
    let mut held = true;
    // The keyring file as it was, should this start write over it and then
    // fail: a refused start leaves the directory as it found it.
    let mut written_over: Option<Option<Vec<u8>>> = None;
    let merged = match (kept, &configured) {
        (Some(mut kept), Some(configured)) => {
            let primary = configured.primary_id();
            // The same configuration as at the last start: a configured key
            // the kept ring lacks was removed by a rotation since, and stays
            // revoked (an old key file must not bring it back).
            let same = last == Some(primary.to_string().as_str());
            let changed = last.is_some() && !same;
            for key in configured.keys() {
                let gone = (same || removed.contains(&key.id())) && kept.get(key.id()).is_none();
                if gone {
                    tracing::warn!(key = %key.id(), "configured key was removed from the tribe's keyring while this node ran; not installed again (update the key file: `tribe keys list` on a member shows the keys in use)");
                    continue;
                }
                if kept.install(key.clone()).is_err() {
                    // The key to seal with, left out, would cut this node
                    // off from every peer that uses it, silently.
                    if key.id() == primary {
                        return Err(Error::Config(format!(
                            "the keyring kept in {} holds {} keys, the most, and the configured \
                             key {primary} is not among them: remove a key the tribe no longer \
                             uses first (`tribe keys remove` on a member; or start without the \
                             new key and remove one), then start again",
                            dir.join(KEYRING_FILE).display(),
                            kept.keys().len(),
                        )));
                    }
                    tracing::warn!(key = %key.id(), "keyring kept in the data dir is full; configured key not added");
                }
            }
            held = kept.get(primary).is_some();
            if changed && kept.primary_id() != primary && kept.use_key(primary).is_ok() {
                tracing::info!(key = %primary, "the configured key changed since the last start: it is the primary now");
                // Kept at once: a crash before the first save must not
                // bring the old primary back.
                written_over = Some(read_file(&dir.join(KEYRING_FILE), MAX_SMALL_FILE).ok());
                save_keyring(dir, &kept).map_err(|e| Error::Io(e.to_string()))?;
            }
            Some(kept)
        }
        (kept, configured) => kept.or(configured.clone()),
    };
    if let Some(configured) = configured.as_ref().filter(|_| held) {
        let id = configured.primary_id().to_string();
        if last != Some(id.as_str()) {
            if let Err(e) = write_private(dir, CONFIGURED_KEY_FILE, id.as_bytes()) {
                if let Some(before) = written_over {
                    let _ = match before {
                        Some(bytes) => write_private(dir, KEYRING_FILE, &bytes),
                        None => std::fs::remove_file(dir.join(KEYRING_FILE)),
                    };
                }
                return Err(Error::Io(e.to_string()));
            }
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tribe-datadir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// A FIFO or a link to a device in a file's place is refused at once,
    /// naming the file (a FIFO blocked the start for good; /dev/zero was
    /// read until memory ran out).
    #[test]
    fn files_that_are_not_regular_are_refused_at_once() {
        for name in [STATE_FILE, KEYRING_FILE, LOCK_FILE, CONFIGURED_KEY_FILE] {
            for odd in ["fifo", "device"] {
                let dir = scratch(&format!("odd-{odd}"));
                prepare(&dir).unwrap();
                let path = dir.join(name);
                if odd == "fifo" {
                    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
                } else {
                    std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
                }
                // A link in the lock's place is refused as a link.
                let why = if name == LOCK_FILE && odd == "device" {
                    "symbolic link"
                } else {
                    "not a regular file"
                };
                // The check a host makes before the start sees it too.
                let checked = check(&dir, "odd").err();
                assert!(
                    checked.is_some_and(|e| e.to_string().contains(why)),
                    "{name}, {odd}: passed the check"
                );
                let err = if name == LOCK_FILE {
                    lock(&dir).err()
                } else if name == CONFIGURED_KEY_FILE {
                    merge_keyring(&dir, None).err()
                } else if name == KEYRING_FILE {
                    load_keyring(&dir).err()
                } else {
                    load(&dir).err()
                };
                let err = err.unwrap_or_else(|| panic!("{name} as a {odd} was taken"));
                assert!(
                    matches!(err, Error::Config(_)) && err.to_string().contains(why),
                    "{name}, {odd}: {err}"
                );
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }

    /// Only this user may open the lock file (anyone who can may take the
    /// lock and keep the node from starting), also one made before with
    /// wider modes.
    #[test]
    fn the_lock_file_is_this_users_alone() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = scratch("lockmode");
        prepare(&dir).unwrap();
        let path = dir.join(LOCK_FILE);
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let held = lock(&dir).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(held);
        std::fs::remove_file(&path).unwrap();
        let held = lock(&dir).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(held);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A data dir that belongs to another user (not root) is refused: its
    /// owner could replace the keyring. One this user's group may write is
    /// taken, with a warning.
    #[test]
    fn a_data_dir_of_another_user_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = scratch("owner");
        prepare(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o770)).unwrap();
        check(&dir, "owner").unwrap();
        let nobody = Some(nix::unistd::Uid::from_raw(65534));
        if nix::unistd::chown(&dir, nobody, None).is_err() {
            // Only root may give a directory away.
            assert!(!nix::unistd::geteuid().is_root());
            eprintln!("not root: a data dir of another user is not tried");
            return;
        }
        let err = check(&dir, "owner").unwrap_err().to_string();
        assert!(err.contains("belongs to another user (uid 65534"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_write_that_fails_leaves_no_temporary_file() {
        let dir = scratch("tmpgone");
        // The rename fails: the file's place is a directory with something in it.
        std::fs::create_dir_all(dir.join("f").join("held")).unwrap();
        assert!(write_private(&dir, "f", b"x").is_err());
        assert!(!dir.join("f.tmp").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_start_that_fails_to_note_its_key_leaves_the_keyring_as_it_was() {
        let dir = scratch("noted");
        prepare(&dir).unwrap();
        let first = Keyring::new(SecretKey::generate());
        merge_keyring(&dir, Some(first.clone())).unwrap();
        save_keyring(&dir, &first).unwrap();
        let before = std::fs::read(dir.join(KEYRING_FILE)).unwrap();
        // `configured-key` cannot be written: its temporary file's place is
        // a directory with something in it.
        std::fs::create_dir_all(dir.join(format!("{CONFIGURED_KEY_FILE}.tmp")).join("x")).unwrap();
        assert!(merge_keyring(&dir, Some(Keyring::new(SecretKey::generate()))).is_err());
        assert_eq!(std::fs::read(dir.join(KEYRING_FILE)).unwrap(), before);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_key_damaged_on_disk_is_found_not_taken_for_another() {
        let dir = scratch("damaged");
        prepare(&dir).unwrap();
        let ring = Keyring::new(SecretKey::generate());
        save_keyring(&dir, &ring).unwrap();
        assert!(read_keyring_file(&dir).unwrap().is_some());
        let path = dir.join(KEYRING_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        let key = ring.primary().to_base64();
        // One character changed: still a valid key, another one.
        let first = if key.starts_with('A') { "B" } else { "A" };
        let damaged = format!("{first}{}", &key[1..]);
        std::fs::write(&path, text.replace(&key, &damaged)).unwrap();
        let err = read_keyring_file(&dir).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn a_link_to_nothing_a_file_in_place_of_the_dir_and_a_stale_tmp_dir_are_named() {
        let dir = scratch("named");
        prepare(&dir).unwrap();
        for file in [STATE_FILE, KEYRING_FILE] {
            std::os::unix::fs::symlink(dir.join("gone"), dir.join(file)).unwrap();
        }
        let err = load(&dir).unwrap_err();
        assert!(
            err.to_string()
                .contains("a link to a file that does not exist"),
            "{err}"
        );
        let err = read_keyring_file(&dir).unwrap_err();
        assert!(err.to_string().contains(KEYRING_FILE), "{err}");
        std::fs::remove_file(dir.join(STATE_FILE)).unwrap();
        // A leftover directory where the temporary file goes: named as such.
        std::fs::create_dir_all(dir.join(format!("{STATE_FILE}.tmp")).join("x")).unwrap();
        let err = write_private(&dir, STATE_FILE, b"{}").unwrap_err();
        assert!(
            err.to_string().contains(&format!("{STATE_FILE}.tmp")),
            "{err}"
        );
        let file = dir.join("a-file");
        std::fs::write(&file, b"").unwrap();
        let err = prepare(&file).unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");
        assert!(check(&file, "n").is_err(), "the check passed a file");
        let link = dir.join("a-link");
        std::os::unix::fs::symlink(dir.join("nowhere"), &link).unwrap();
        let err = prepare(&link).unwrap_err();
        assert!(err.to_string().contains("a link to a directory"), "{err}");
        assert!(
            check(&link, "n").is_err(),
            "the check passed a link to nothing"
        );
        std::fs::create_dir(dir.join(LOCK_FILE)).unwrap();
        let err = check(&dir, "n").unwrap_err();
        let start = lock(&dir).unwrap_err();
        assert_eq!(
            err.to_string(),
            start.to_string(),
            "the check and the start differ"
        );
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A lock file that is a link is refused by the check and the start,
    /// which neither create nor chmod what it points to (a member of the
    /// dir's group could have a node running as root chmod any file).
    #[test]
    fn a_lock_file_that_is_a_link_is_refused_and_its_target_left_alone() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = scratch("locklink");
        prepare(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, b"x").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(LOCK_FILE)).unwrap();
        for err in [check(&dir, "n").unwrap_err(), lock(&dir).unwrap_err()] {
            assert!(matches!(err, Error::Config(_)), "{err}");
            assert!(err.to_string().contains("symbolic link"), "{err}");
        }
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "the link's target was chmodded");
        std::fs::remove_file(dir.join(LOCK_FILE)).unwrap();
        std::fs::hard_link(&victim, dir.join(LOCK_FILE)).unwrap();
        for err in [check(&dir, "n").unwrap_err(), lock(&dir).unwrap_err()] {
            assert!(err.to_string().contains("hard links"), "{err}");
        }
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "the hard link's file was chmodded");
        std::fs::remove_file(dir.join(LOCK_FILE)).unwrap();
        let missing = dir.join("made");
        std::os::unix::fs::symlink(&missing, dir.join(LOCK_FILE)).unwrap();
        assert!(lock(&dir).is_err());
        assert!(!missing.exists(), "the link's target was created");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// What the start refuses in the configured-key file (too large, a
    /// link to nothing), the check refuses too, with the same error.
    #[test]
    fn a_configured_key_file_the_start_refuses_fails_the_check() {
        let dir = scratch("ckcheck");
        prepare(&dir).unwrap();
        let path = dir.join(CONFIGURED_KEY_FILE);
        std::fs::write(&path, vec![b'a'; 2 * 1024 * 1024]).unwrap();
        let err = check(&dir, "n").unwrap_err();
        let start = merge_keyring(&dir, None).unwrap_err();
        assert_eq!(err.to_string(), start.to_string());
        assert!(err.to_string().contains("larger than"), "{err}");
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(dir.join("nowhere"), &path).unwrap();
        let err = check(&dir, "n").unwrap_err();
        assert_eq!(
            err.to_string(),
            merge_keyring(&dir, None).unwrap_err().to_string()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn a_check_finds_what_a_start_would_refuse_and_changes_nothing() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("check");
        check(&dir, "n").unwrap();
        assert!(!dir.exists(), "a check creates nothing");
        prepare(&dir).unwrap();
        check(&dir, "n").unwrap();
        assert!(
            !dir.join(LOCK_FILE).exists(),
            "a check creates no lock file"
        );
        // Held by a running node: what a start meets, not the setup.
        let held = lock(&dir).unwrap();
        check(&dir, "n").unwrap();
        drop(held);
        std::fs::write(state_path(&dir), b"not json").unwrap();
        let err = check(&dir, "n").unwrap_err();
        assert!(
            matches!(&err, Error::Config(m) if m.contains("not a valid state file")),
            "{err}"
        );
        std::fs::remove_file(state_path(&dir)).unwrap();
        std::fs::write(dir.join(KEYRING_FILE), b"{}").unwrap();
        let err = check(&dir, "n").unwrap_err();
        assert!(
            matches!(&err, Error::Config(m) if m.contains("not a valid keyring file")),
            "{err}"
        );
        std::fs::remove_file(dir.join(KEYRING_FILE)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = check(&dir, "n").unwrap_err();
        assert!(
            matches!(&err, Error::Config(m) if m.contains("writable by every user")),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_missing_dir_is_made_owner_only_and_an_existing_one_keeps_its_mode_unless_anyone_may_write()
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |d: &Path| std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
        let dir = scratch("modes");
        prepare(&dir.join("new")).unwrap();
        assert_eq!(mode(&dir.join("new")), 0o700);
        let shared = dir.join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare(&shared).unwrap();
        assert_eq!(mode(&shared), 0o755);
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = prepare(&shared).unwrap_err().to_string();
        assert!(err.contains("writable by every user"), "{err}");
        assert_eq!(mode(&shared), 0o777);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn first_start_has_nothing_and_a_save_reads_back() {
        let dir = scratch("roundtrip");
        prepare(&dir).unwrap();
        assert_eq!(load(&dir).unwrap(), None);
        let durable = Durable {
            name: "writer".into(),
            peers: vec!["127.0.0.1:7946".parse().unwrap()],
            records: Vec::new(),
            generation: 7,
            last_contact_ms: 9,
            fact_changes: [
                ("rack".to_string(), Some("r2".to_string())),
                ("old".to_string(), None),
            ]
            .into_iter()
            .collect(),
        };
        save(&dir, &durable).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(durable));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_keyring_file_is_private_round_trips_and_keeps_its_primary() {
        let dir = scratch("keyring");
        prepare(&dir).unwrap();
        let first = SecretKey::generate();
        let second = SecretKey::generate();
        let mut ring = Keyring::new(first.clone());
        ring.install(second.clone()).unwrap();
        ring.use_key(second.id()).unwrap();
        save_keyring(&dir, &ring).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(KEYRING_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A configured key joins the kept ring; the kept primary stays.
        let third = Keyring::new(SecretKey::generate());
        let merged = merge_keyring(&dir, Some(third.clone())).unwrap().unwrap();
        assert_eq!(merged.primary_id(), second.id());
        assert_eq!(merged.len(), 3);
        // The same configured key again: the cluster rotated since it was
        // written down, so the kept primary still stays.
        let merged = merge_keyring(&dir, Some(third.clone())).unwrap().unwrap();
        assert_eq!(merged.primary_id(), second.id());
        // Another configured key than at the last start is the operator's
        // newer word: it becomes the primary.
        let fourth = Keyring::new(SecretKey::generate());
        let merged = merge_keyring(&dir, Some(fourth.clone())).unwrap().unwrap();
        assert_eq!(merged.primary_id(), fourth.primary_id());
        assert!(merged.get(second.id()).is_some(), "the kept keys stay");
        // A rotation removes the configured key; a restart with the same
        // key file must not install it again.
        let mut rotated = merged.clone();
        rotated.use_key(second.id()).unwrap();
        rotated.remove(fourth.primary_id()).unwrap();
        save_keyring(&dir, &rotated).unwrap();
        let merged = merge_keyring(&dir, Some(fourth.clone())).unwrap().unwrap();
        assert!(
            merged.get(fourth.primary_id()).is_none(),
            "a removed key stays removed"
        );
        assert_eq!(merged.primary_id(), second.id());
        // A kept ring too full for a newly configured key refuses the
        // start (the node would seal with another key than the operator
        // gave, cut off from peers using it), and changes nothing: a start
        // with room makes the key primary.
        let mut full = Keyring::new(SecretKey::generate());
        while full.len() < crate::crypto::MAX_KEYS {
            full.install(SecretKey::generate()).unwrap();
        }
        save_keyring(&dir, &full).unwrap();
        let fifth = Keyring::new(SecretKey::generate());
        let err = merge_keyring(&dir, Some(fifth.clone())).unwrap_err();
        assert!(
            matches!(err, Error::Config(_)) && err.to_string().contains("holds 8 keys"),
            "{err}"
        );
        assert_eq!(load_keyring(&dir).unwrap().unwrap().len(), full.len());
        let some = full
            .ids()
            .into_iter()
            .find(|id| *id != full.primary_id())
            .unwrap();
        full.remove(some).unwrap();
        save_keyring(&dir, &full).unwrap();
        let merged = merge_keyring(&dir, Some(fifth.clone())).unwrap().unwrap();
        assert_eq!(merged.primary_id(), fifth.primary_id());
        std::fs::write(
            dir.join(KEYRING_FILE),
            b"{\"primary\": \"c2VjcmV0\", \"keys\": []}",
        )
        .unwrap();
        let err = load_keyring(&dir).unwrap_err().to_string();
        assert!(
            err.contains(KEYRING_FILE) && !err.contains("c2VjcmV0"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A key the tribe removed while this node ran stays out of its ring
    /// when a later start names it again, also after the node was started
    /// with another key in between (an old key file put back).
    #[test]
    fn a_removed_key_stays_removed_whatever_key_file_comes_back() {
        let dir = scratch("revoked");
        prepare(&dir).unwrap();
        let old = Keyring::new(SecretKey::generate());
        let first = merge_keyring(&dir, Some(old.clone())).unwrap().unwrap();
        // The tribe rotates: a new key, used, and the old one removed.
        let new = SecretKey::generate();
        let mut ring = first.clone();
        ring.install(new.clone()).unwrap();
        save_keyring(&dir, &ring).unwrap();
        ring.use_key(new.id()).unwrap();
        ring.remove(old.primary_id()).unwrap();
        save_keyring(&dir, &ring).unwrap();
        // Restarted with a newer key file, then with the old one again.
        let newer = Keyring::new(SecretKey::generate());
        let merged = merge_keyring(&dir, Some(newer.clone())).unwrap().unwrap();
        assert_eq!(merged.primary_id(), newer.primary_id());
        save_keyring(&dir, &merged).unwrap();
        let merged = merge_keyring(&dir, Some(old.clone())).unwrap().unwrap();
        assert!(
            merged.get(old.primary_id()).is_none(),
            "the removed key is back in the ring"
        );
        assert_eq!(merged.primary_id(), newer.primary_id());
        // The memory survives saves, and a key installed again leaves it.
        save_keyring(&dir, &merged).unwrap();
        let (_, removed) = read_keyring_file(&dir).unwrap().unwrap();
        assert_eq!(removed, vec![old.primary_id()]);
        let mut again = merged.clone();
        again.install(old.primary().clone()).unwrap();
        save_keyring(&dir, &again).unwrap();
        let (_, removed) = read_keyring_file(&dir).unwrap().unwrap();
        assert!(removed.is_empty(), "{removed:?}");
        // An entry spoilt by hand is left out; the keys are still read.
        let text = std::fs::read_to_string(dir.join(KEYRING_FILE)).unwrap();
        let spoilt = text.replace("\"removed\": []", "\"removed\": [\"zz\", \"0000abcd\"]");
        assert_ne!(spoilt, text);
        std::fs::write(dir.join(KEYRING_FILE), spoilt).unwrap();
        let (ring, removed) = read_keyring_file(&dir).unwrap().unwrap();
        assert_eq!(ring.primary_id(), again.primary_id());
        assert_eq!(removed, vec!["0000abcd".parse().unwrap()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_lock_on_a_data_dir_is_refused_until_the_first_is_dropped() {
        let dir = scratch("lock");
        prepare(&dir).unwrap();
        let first = lock(&dir).unwrap();
        let err = lock(&dir).unwrap_err().to_string();
        assert!(err.contains("in use by another node"), "{err}");
        drop(first);
        lock(&dir).unwrap();
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
