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
/// is refused at once, not waited on or read without end. One that other
/// users may read, or that another user owns, is taken with a warning in
/// the log ([`exposure`]). Errors: [`Error::Io`] when it cannot be read
/// (missing, no permission), [`Error::Config`] when it is not a regular
/// file or is larger than [`MAX_KEY_FILE`], [`Error::InvalidArgument`] for
/// an empty path or a file that does not hold one key alone. The key is
/// never quoted.
pub fn read(path: &Path) -> Result<SecretKey> {
    if path.as_os_str().is_empty() {
        return Err(Error::InvalidArgument("the key file path is empty".into()));
    }
    // A key given where its file's path goes (`key_file = "<key>"`) is
    // not written into the error: it would end in a service's log.
    if path
        .to_str()
        .is_some_and(|p| SecretKey::from_base64(p).is_ok())
    {
        return Err(Error::InvalidArgument(
            "the key file path given is a key itself (withheld): give the key as a key, or \
             the path of a file that holds it"
                .into(),
        ));
    }
    let bytes = read_file(path, MAX_KEY_FILE).map_err(|why| match why {
        Unread::Missing => Error::Io(format!("cannot read key file {path:?}: it does not exist")),
        Unread::Failed(e) => Error::Io(format!("cannot read key file {path:?}: {e}")),
        Unread::NotRegular => Error::Config(format!(
            "key file {path:?} is not a regular file (a directory, a FIFO or a device)"
        )),
        Unread::TooLarge => Error::Config(format!(
            "key file {path:?} is larger than {MAX_KEY_FILE} bytes: it must hold the key \
             alone, as `tribe keygen > FILE` writes it"
        )),
    })?;
    if let Some(warning) = exposure("key file", path) {
        tracing::warn!("{warning}");
    }
    let bytes = zeroize::Zeroizing::new(bytes);
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| Error::InvalidArgument(format!("key file {path:?}: not UTF-8 text")))?;
    parse(path, text)
}

/// The key in the text of key file `path` (named in errors only):
/// [`Error::InvalidArgument`] when it holds more than one line (a comment,
/// two keys) or no valid key.
pub fn parse(path: &Path, text: &str) -> Result<SecretKey> {
    if text.trim().is_empty() {
        return Err(Error::InvalidArgument(format!(
            "key file {path:?} is empty (a FIFO read before anything wrote to it reads so too): \
             it must hold the key, as `tribe keygen > FILE` writes it"
        )));
    }
    if text.trim().lines().count() > 1 {
        return Err(Error::InvalidArgument(format!(
            "key file {path:?} holds more than one line: it must hold the key alone, \
             as `tribe keygen > FILE` writes it"
        )));
    }
    SecretKey::from_base64(text)
        .map_err(|e| Error::InvalidArgument(format!("key file {path:?}: {e}")))
}

/// Why a file holding a secret (`what`: "key file", ...) is exposed, if it
/// is: other users may read it, or another user (not root) owns it and
/// could replace it.
pub fn exposure(what: &str, path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Some(format!(
            "{what} {} is readable by other users (mode {mode:o}); `chmod 600` it",
            path.display()
        ));
    }
    let me = nix::unistd::geteuid().as_raw();
    (meta.uid() != me && meta.uid() != 0).then(|| {
        format!(
            "{what} {} is owned by another user (uid {}), who could replace it; \
             `chown` it to this user",
            path.display(),
            meta.uid()
        )
    })
}

/// A run of base64 characters that ends with a key's `=`.
static KEY_RUN: std::sync::LazyLock<regex::Regex> =
    std::sync::LazyLock::new(|| regex::Regex::new(r"[A-Za-z0-9+/]{43,}=").expect("a valid regex"));

/// `text` with every key in it (44 characters of base64 that decode to 32
/// bytes, as `tribe keygen` prints one) replaced by `(a key, withheld)`:
/// for messages that quote what a user gave, where a key given under the
/// wrong option (`--encryption "$KEY"`) would otherwise end in a log. A
/// key may hold `/`, so one at the end of a path (`/data/<key>`) is part
/// of a longer run of base64 characters: every 44 characters of a run
/// that end with its `=` are looked at.
pub fn withhold_keys(text: &str) -> std::borrow::Cow<'_, str> {
    KEY_RUN.replace_all(text, |m: &regex::Captures<'_>| {
        let run = &m[0];
        // ASCII only: byte offsets are char offsets.
        let key_at = run.len() - 44;
        if SecretKey::from_base64(&run[key_at..]).is_ok() {
            format!("{}(a key, withheld)", &run[..key_at])
        } else {
            run.to_string()
        }
    })
}

/// `text` with every run of [`KEY_PIECE`] or more characters taken from a
/// key in `source` withheld: for a parser's message about `source`, which
/// quotes the pieces it could not read (a key given as a policy is cut at
/// a `+`, a `/` or a digit, and each piece would escape [`withhold_keys`]).
/// A key here is also one without its `=`, or split by white space.
pub(crate) fn withhold_key_pieces<'a>(text: &'a str, source: &str) -> std::borrow::Cow<'a, str> {
    let runs = secret_runs(source);
    if runs.is_empty() {
        return std::borrow::Cow::Borrowed(text);
    }
    // Each piece starts with one of these: the rest of a position's look
    // is made only where one matches.
    let starts: std::collections::HashSet<&[u8]> =
        runs.iter().flat_map(|r| r.windows(KEY_PIECE)).collect();
    let held = |piece: &[u8]| {
        runs.iter()
            .any(|r| r.windows(piece.len()).any(|w| w == piece))
    };
    // The longest run at the start of `rest` that a secret holds.
    let piece = |rest: &[u8]| {
        if rest.len() < KEY_PIECE || !starts.contains(&rest[..KEY_PIECE]) {
            return None;
        }
        let mut len = KEY_PIECE;
        while len < rest.len() && held(&rest[..=len]) {
            len += 1;
        }
        Some(len)
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        match piece(rest.as_bytes()) {
            // Key characters are ASCII: the cut is a char boundary.
            Some(len) => {
                out.push_str("(a key, withheld)");
                rest = &rest[len..];
            }
            None => {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The shortest piece of a key [`withhold_key_pieces`] withholds.
const KEY_PIECE: usize = 6;

/// Whether 43 characters without their `=` may be a key: a quarter of
/// all such runs decode as one, so only those that mix upper case, lower
/// case and digits count, as a random key all but always does (one in
/// 1,500 has no digit) and a name seldom.
fn mixes_cases_and_digits(text: &str) -> bool {
    text.bytes().any(|b| b.is_ascii_uppercase())
        && text.bytes().any(|b| b.is_ascii_lowercase())
        && text.bytes().any(|b| b.is_ascii_digit())
}

/// The keys in `text`, as [`withhold_keys`] finds them, and also those
/// without their `=` or split by white space: each as the runs of `text`
/// that make it up.
fn secret_runs(text: &str) -> Vec<&[u8]> {
    static RUN: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"[A-Za-z0-9+/]+=?").expect("a valid regex"));
    let mut secrets: Vec<&[u8]> = KEY_RUN
        .find_iter(text)
        .map(|m| &m.as_str()[m.as_str().len() - 44..])
        .filter(|k| SecretKey::from_base64(k).is_ok())
        .map(str::as_bytes)
        .collect();
    let runs: Vec<regex::Match<'_>> = RUN.find_iter(text).collect();
    for first in 0..runs.len() {
        let mut joined = String::new();
        for (i, run) in runs.iter().enumerate().skip(first) {
            // Only white space between the runs joined.
            if i > first && !text[runs[i - 1].end()..run.start()].trim().is_empty() {
                break;
            }
            joined.push_str(run.as_str());
            if joined.len() > 44 {
                break;
            }
            let padded = if joined.len() == 43 && mixes_cases_and_digits(&joined) {
                format!("{joined}=")
            } else {
                joined.clone()
            };
            if padded.len() == 44 && SecretKey::from_base64(&padded).is_ok() {
                secrets.extend(runs[first..=i].iter().map(|r| r.as_str().as_bytes()));
                break;
            }
        }
    }
    // A key without its `=` glued to other characters (`facts.rack<key>`):
    // every 43 characters of a longer run.
    for run in runs.iter().map(|r| r.as_str().trim_end_matches('=')) {
        if run.len() <= 44 {
            continue;
        }
        for at in 0..=run.len() - 43 {
            let window = &run[at..at + 43];
            if mixes_cases_and_digits(window)
                && SecretKey::from_base64(&format!("{window}=")).is_ok()
            {
                secrets.push(window.as_bytes());
            }
        }
    }
    secrets
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

    #[test]
    fn a_key_file_others_may_read_or_own_is_named_exposed() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = scratch("exposed");
        let path = dir.join("k");
        std::fs::write(&path, SecretKey::generate().to_base64()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(exposure("key file", &path), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let warning = exposure("key file", &path).unwrap();
        assert!(
            warning.contains("readable by other users (mode 644)"),
            "{warning}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let nobody = nix::unistd::Uid::from_raw(65534);
        if nix::unistd::chown(&path, Some(nobody), None).is_ok() {
            let warning = exposure("key file", &path).unwrap();
            assert!(
                warning.contains("owned by another user (uid 65534)"),
                "{warning}"
            );
        } else {
            eprintln!("not root: a key file of another user is not tried");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn keys_in_a_message_are_withheld_and_nothing_else() {
        let key = SecretKey::generate().to_base64();
        let msg = format!("encryption mode \"{key}\" is not accept; and {key}.");
        let out = withhold_keys(&msg);
        assert!(!out.contains(&key), "{out}");
        assert_eq!(out.matches("(a key, withheld)").count(), 2, "{out}");
        // Base64 that is no key stays.
        for text in ["aGVsbG8gd29ybGQ=", "plain text", "/a/path/of/names="] {
            assert_eq!(withhold_keys(text), text);
        }
        // A key at the end of a path, or after other base64 characters.
        for before in ["/data/dir/", "A", "x/"] {
            let text = format!("data dir {before}{key} is not a directory");
            let out = withhold_keys(&text);
            assert_eq!(
                out,
                format!("data dir {before}(a key, withheld) is not a directory")
            );
        }
        let err = read(std::path::Path::new(&key)).unwrap_err();
        assert!(!err.to_string().contains(&key), "{err}");
    }

    /// A parser's message quoting pieces of a key it was given loses each
    /// piece of six characters or more, and nothing else.
    #[test]
    fn pieces_of_a_key_in_a_parsers_message_are_withheld() {
        let key = "0tuHtjIriPirG26w6SqV8TOZ6t8CwtyTSMUe1obW2a8=";
        assert!(SecretKey::from_base64(key).is_ok());
        let msg =
            "extraneous input 'tuHtjIriPirG26w6SqV8TOZ6t8CwtyTSMUe1obW2a8' expecting <EOF>; 'Uo' é";
        assert_eq!(
            withhold_key_pieces(msg, key),
            "extraneous input '(a key, withheld)' expecting <EOF>; 'Uo' é"
        );
        let msg = "at 'jIriPi' and '+8' and 'SqV8TO'";
        assert_eq!(
            withhold_key_pieces(msg, &format!("facts.x == {key}")),
            "at '(a key, withheld)' and '+8' and '(a key, withheld)'"
        );
        // No key in the source: the message stays as it is.
        assert_eq!(withhold_key_pieces(msg, "facts.jIriPi == 1"), msg);
        // A key without its `=`, or split over two lines.
        let bare = &key[..43];
        let msg = format!("unknown variable '{bare}': only 'facts' is available");
        assert_eq!(
            withhold_key_pieces(&msg, bare),
            "unknown variable '(a key, withheld)': only 'facts' is available"
        );
        let split = format!("{}\n{}", &key[..22], &key[22..]);
        let msg = format!("mismatched input '{}' at '{}'", &key[..22], &key[22..43]);
        let out = withhold_key_pieces(&msg, &split);
        assert!(
            !out.contains(&key[2..8]) && !out.contains(&key[24..30]),
            "{out}"
        );
        // A key without its `=` glued to a name, twice.
        let glued = format!("facts.rack{bare}{bare} == 1");
        let msg = format!("undeclared reference to 'rack{bare}{bare}'");
        let out = withhold_key_pieces(&msg, &glued);
        assert!(
            !out.contains(&key[2..8]) && !out.contains(&key[30..36]),
            "{out}"
        );
        // Words and names are no secrets, also long ones.
        let long = "facts.the_number_of_processors_in_this_rack_of_the_datacenter";
        let msg =
            "undeclared reference to 'the_number_of_processors_in_this_rack_of_the_datacenter'";
        assert_eq!(withhold_key_pieces(msg, long), msg);
        let long = "facts.numberOfProcessorsInThisRackOfTheDataCenters";
        let msg = "undeclared reference to 'numberOfProcessorsInThisRackOfTheDataCenters'";
        assert_eq!(withhold_key_pieces(msg, long), msg);
        let msg = "unknown function 'processorCountTotal' on facts.hostname_of_rack";
        assert_eq!(
            withhold_key_pieces(msg, "processorCountTotal2(facts.hostname_of_rack)"),
            msg
        );
    }
}
