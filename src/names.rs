//! Validation of the names that travel in replicated records.

use crate::error::Error;

/// Longest node, tribe, policy, plugin or task name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Longest plugin version string, in bytes.
pub const MAX_VERSION_LEN: usize = 32;

/// Checks a name: 1..=64 bytes of ASCII letters, digits, `_`, `-`, `.`, `:` or `@`,
/// starting with a letter or digit. Names appear in URLs and table output, so
/// anything else is refused.
pub fn check(what: &'static str, name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        Some("is empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("is longer than 64 bytes")
    } else if !name.as_bytes()[0].is_ascii_alphanumeric() {
        Some("must start with an ASCII letter or digit")
    } else if !name.bytes().all(is_name_byte) {
        Some("may hold only ASCII letters, digits and _ - . : @")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            what,
            name: truncate_for_message(name).into_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Checks a plugin version: like a name but up to 32 bytes.
pub fn check_version(version: &str) -> Result<(), Error> {
    // The length first: a long version is told its own limit.
    if version.len() > MAX_VERSION_LEN {
        return Err(Error::InvalidName {
            what: "plugin version",
            name: truncate_for_message(version).into_owned(),
            reason: "is longer than 32 bytes",
        });
    }
    check("plugin version", version)
}

/// Whether `name` would pass [`check`]; for validating records from peers.
pub fn is_valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(is_name_byte)
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@')
}

/// Keeps error messages bounded when a caller passes something huge. A
/// key in it is withheld first: cut, it would no longer be recognised.
pub(crate) fn truncate_for_message(name: &str) -> std::borrow::Cow<'_, str> {
    let name = crate::keyfile::withhold_keys(name);
    // Marked, so that a cut name does not pass for an 80-character one.
    match name.char_indices().nth(80) {
        Some((end, _)) => format!("{}...", &name[..end]).into(),
        None => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_name_is_cut_visibly_in_the_message() {
        let long = "a".repeat(70_000);
        let e = check("node name", &long).unwrap_err().to_string();
        assert!(e.contains(&format!("\"{}...\"", "a".repeat(80))), "{e}");
        assert!(e.len() < 200, "{e}");
    }

    #[test]
    fn accepts_ordinary_names() {
        for name in [
            "core",
            "storage-tier",
            "node_1",
            "a",
            "web.eu-1",
            "n@host:1",
        ] {
            assert!(check("tribe", name).is_ok(), "{name}");
            assert!(is_valid(name));
        }
    }

    #[test]
    fn refuses_bad_names() {
        let long = "x".repeat(65);
        for name in ["", "-lead", "sp ace", "sl/ash", "ünï", long.as_str(), "a\n"] {
            assert!(
                matches!(check("tribe", name), Err(Error::InvalidName { .. })),
                "{name:?}"
            );
            assert!(!is_valid(name));
        }
    }

    #[test]
    fn a_long_version_is_told_its_own_limit() {
        for len in [33, 65, 1 << 20] {
            let err = check_version(&"1".repeat(len)).unwrap_err().to_string();
            assert!(err.contains("longer than 32 bytes"), "{err}");
            assert!(err.len() < 200, "{err}");
        }
        assert!(check_version(&"1".repeat(32)).is_ok());
    }

    /// A read of any name answers "unknown" with the name cut, however
    /// long it was (an admin API path of tens of KiB).
    #[test]
    fn an_unknown_name_is_cut_in_the_message() {
        let long = "n".repeat(60_000);
        for e in [
            Error::UnknownTribe(long.clone()),
            Error::UnknownNode(long.clone()),
            Error::UnknownPolicy(long.clone()),
            Error::UnknownFact(long.clone()),
            Error::UnknownTask {
                tribe: long.clone(),
                id: long.clone(),
            },
            Error::UnknownPlugin {
                tribe: long.clone(),
                name: long.clone(),
                version: long.clone(),
            },
        ] {
            let text = e.to_string();
            assert!(text.len() < 400 && text.contains("n..."), "{text}");
        }
        assert_eq!(
            Error::UnknownTribe("web".into()).to_string(),
            "unknown tribe \"web\""
        );
        // A key across the cut is withheld before it, not cut in two.
        let key = crate::SecretKey::generate().to_base64();
        for filler in [0, 37, 60, 79] {
            let name = format!("{}{key}", "x".repeat(filler));
            for text in [
                Error::UnknownFact(name.clone()).to_string(),
                check("tribe", &name).unwrap_err().to_string(),
            ] {
                assert!(!text.contains(&key[..20]), "{text}");
            }
        }
    }
}
