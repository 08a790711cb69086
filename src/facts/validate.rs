//! Checks facts given by users (`--fact`, config) or received from peers, so
//! every key works as `facts.key` in a CEL policy and every value is bounded
//! and printable.

use super::{MAX_FACT_KEY_LEN, MAX_FACT_VALUE_LEN};

/// CEL keywords, which cannot be field selectors (`facts.in` does not parse).
/// CEL's other reserved words (`package`, `namespace`, ...) are allowed as
/// selectors by the CEL spec, so `facts.namespace` is fine and stays allowed.
const CEL_KEYWORDS: &[&str] = &["true", "false", "null", "in"];

/// How much of an offending key or argument an error message quotes.
const MAX_QUOTED_LEN: usize = 80;

/// Why a user-supplied fact was rejected. Messages name the key and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FactError {
    /// The key is the empty string.
    #[error("fact key is empty: keys must be 1..={max} bytes", max = MAX_FACT_KEY_LEN)]
    EmptyKey,
    /// The key is longer than [`MAX_FACT_KEY_LEN`] bytes.
    #[error("fact key {key:?} is {len} bytes long: keys must be at most {max} bytes", max = MAX_FACT_KEY_LEN)]
    KeyTooLong {
        /// The key (shortened if very long).
        key: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The key has a character outside `[A-Za-z_][A-Za-z0-9_]*`.
    #[error("fact key {key:?} has invalid character {ch:?} at byte {pos}: keys must match [A-Za-z_][A-Za-z0-9_]*")]
    InvalidKeyChar {
        /// The key (shortened if very long).
        key: String,
        /// The first offending character.
        ch: char,
        /// Its byte offset in the key.
        pos: usize,
    },
    /// The key is a CEL keyword (`true`, `false`, `null`, `in`), so
    /// `facts.key` would not parse.
    #[error("fact key {key:?} is a CEL keyword (true, false, null, in) and cannot be used as `facts.{key}`")]
    ReservedKey {
        /// The key.
        key: String,
    },
    /// The value is longer than [`MAX_FACT_VALUE_LEN`] bytes.
    #[error("value of fact {key:?} is {len} bytes long: values must be at most {max} bytes", max = MAX_FACT_VALUE_LEN)]
    ValueTooLong {
        /// The key.
        key: String,
        /// The value's length in bytes.
        len: usize,
    },
    /// The value contains a control character (newline, tab, DEL, ...).
    #[error("value of fact {key:?} has control character U+{code:04X} at byte {pos}: values must not contain control characters", code = u32::from(*ch))]
    ControlCharInValue {
        /// The key.
        key: String,
        /// The first offending character.
        ch: char,
        /// Its byte offset in the value.
        pos: usize,
    },
    /// A fact argument that is an encryption key (`--fact "$KEY"` would
    /// split it at its `=` padding into a name and an empty value): facts
    /// are gossiped to every member and shown by every API.
    #[error("a fact that is an encryption key (a key of `tribe keygen`) is refused: facts are sent to every member and shown by every API")]
    IsKey,
    /// A command-line fact argument has no `=`.
    #[error("fact argument {arg:?} is not of the form key=value")]
    MissingSeparator {
        /// The argument (shortened if very long).
        arg: String,
    },
}

/// Validates a user-supplied fact; never panics.
///
/// Keys: 1..=[`MAX_FACT_KEY_LEN`] bytes matching `[A-Za-z_][A-Za-z0-9_]*` and
/// not a CEL keyword (`true`, `false`, `null`, `in`), so `facts.key` is a
/// valid CEL field selection.
/// Values: at most [`MAX_FACT_VALUE_LEN`] bytes, no control characters; the
/// empty value is allowed.
pub fn validate_fact(key: &str, value: &str) -> Result<(), FactError> {
    validate_key(key)?;
    validate_value(key, value)
}

/// Parses `"key=value"` (as given on a command line) and validates it.
///
/// Splits at the first `=`, so the value may itself contain `=`. Nothing is
/// trimmed: stray spaces are reported, not silently dropped.
pub fn parse_fact_arg(arg: &str) -> Result<(String, String), FactError> {
    // A key, split at its `=` padding, would make a valid fact name; the
    // other messages quote the argument. (A key as a value is a fair
    // value: a base64 SHA-256 digest has its shape.)
    if crate::crypto::SecretKey::from_base64(arg).is_ok() {
        return Err(FactError::IsKey);
    }
    let (key, value) = arg
        .split_once('=')
        .ok_or_else(|| FactError::MissingSeparator { arg: shorten(arg) })?;
    validate_fact(key, value)?;
    Ok((key.to_owned(), value.to_owned()))
}

fn validate_key(key: &str) -> Result<(), FactError> {
    if key.is_empty() {
        return Err(FactError::EmptyKey);
    }
    if key.len() > MAX_FACT_KEY_LEN {
        return Err(FactError::KeyTooLong {
            key: shorten(key),
            len: key.len(),
        });
    }
    for (pos, ch) in key.char_indices() {
        let ok = ch == '_' || ch.is_ascii_alphabetic() || (pos > 0 && ch.is_ascii_digit());
        if !ok {
            return Err(FactError::InvalidKeyChar {
                key: key.to_owned(),
                ch,
                pos,
            });
        }
    }
    if CEL_KEYWORDS.contains(&key) {
        return Err(FactError::ReservedKey {
            key: key.to_owned(),
        });
    }
    Ok(())
}

fn validate_value(key: &str, value: &str) -> Result<(), FactError> {
    if value.len() > MAX_FACT_VALUE_LEN {
        return Err(FactError::ValueTooLong {
            key: key.to_owned(),
            len: value.len(),
        });
    }
    match value.char_indices().find(|(_, ch)| ch.is_control()) {
        Some((pos, ch)) => Err(FactError::ControlCharInValue {
            key: key.to_owned(),
            ch,
            pos,
        }),
        None => Ok(()),
    }
}

/// Keeps error messages readable when the input is huge.
fn shorten(s: &str) -> String {
    if s.len() <= MAX_QUOTED_LEN {
        return s.to_owned();
    }
    let mut end = MAX_QUOTED_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_fact_accepts() {
        let long_key = "k".repeat(MAX_FACT_KEY_LEN);
        let long_value = "v".repeat(MAX_FACT_VALUE_LEN);
        let umlauts = "ü".repeat(MAX_FACT_VALUE_LEN / 2);
        for (key, value) in [
            ("rack", "r12"),
            ("_private", ""),
            ("A1_b2", "spaces and = signs are fine"),
            ("in_", "Grüße, 東京 🚀"),
            ("namespace", "CEL reserves it, but allows it as a selector"),
            ("null_", "keywords only as exact words"),
            (long_key.as_str(), long_value.as_str()),
            ("k", umlauts.as_str()),
        ] {
            assert_eq!(validate_fact(key, value), Ok(()), "{key}={value}");
        }
    }

    #[test]
    fn validate_fact_rejects_keys() {
        assert_eq!(validate_fact("", "v"), Err(FactError::EmptyKey));
        let long = "k".repeat(MAX_FACT_KEY_LEN + 1);
        assert!(matches!(
            validate_fact(&long, "v"),
            Err(FactError::KeyTooLong { len: 65, .. })
        ));
        for (key, ch, pos) in [
            ("1abc", '1', 0),
            ("a-b", '-', 1),
            ("a.b", '.', 1),
            ("sp ace", ' ', 2),
            ("ümlaut", 'ü', 0),
            ("new\nline", '\n', 3),
        ] {
            assert_eq!(
                validate_fact(key, "v"),
                Err(FactError::InvalidKeyChar {
                    key: key.to_owned(),
                    ch,
                    pos
                })
            );
        }
        for key in ["in", "true", "false", "null"] {
            assert_eq!(
                validate_fact(key, "v"),
                Err(FactError::ReservedKey {
                    key: key.to_owned()
                })
            );
        }
        // A long run of multi-byte chars: length is checked first, in bytes.
        let wide = "é".repeat(40);
        assert!(matches!(
            validate_fact(&wide, "v"),
            Err(FactError::KeyTooLong { len: 80, .. })
        ));
    }

    #[test]
    fn a_key_given_as_a_fact_is_refused_without_quoting_it() {
        // A key whose base64 holds neither `+` nor `/` is a valid fact name
        // once split at its padding.
        let key = std::iter::repeat_with(crate::crypto::SecretKey::generate)
            .map(|k| k.to_base64())
            .find(|k| !k.contains(['+', '/']))
            .unwrap();
        let err = parse_fact_arg(&key).unwrap_err();
        assert_eq!(err, FactError::IsKey);
        assert!(!err.to_string().contains(&key[..20]), "{err}");
        // A digest's shape as a value stays a fair value, and a name of a
        // key's 43 characters with no value a fair fact.
        assert_eq!(
            parse_fact_arg(&format!("config_sha256={key}")).map(|(k, _)| k),
            Ok("config_sha256".to_string())
        );
        assert_eq!(
            validate_fact("cpuFeatureFlagsAvx512VnniAndBf16SupportedOk", ""),
            Ok(())
        );
    }

    #[test]
    fn validate_fact_rejects_values() {
        let over = "v".repeat(MAX_FACT_VALUE_LEN + 1);
        assert_eq!(
            validate_fact("rack", &over),
            Err(FactError::ValueTooLong {
                key: "rack".into(),
                len: MAX_FACT_VALUE_LEN + 1
            })
        );
        // 1023 ASCII bytes + one 2-byte char = 1025 bytes.
        let wide = format!("{}é", "v".repeat(MAX_FACT_VALUE_LEN - 1));
        assert!(matches!(
            validate_fact("rack", &wide),
            Err(FactError::ValueTooLong { len: 1025, .. })
        ));
        for (value, ch, pos) in [
            ("a\nb", '\n', 1),
            ("\ttab", '\t', 0),
            ("del\u{7f}", '\u{7f}', 3),
            ("é\u{85}", '\u{85}', 2),
            ("nul\0", '\0', 3),
        ] {
            assert_eq!(
                validate_fact("rack", value),
                Err(FactError::ControlCharInValue {
                    key: "rack".into(),
                    ch,
                    pos
                })
            );
        }
    }

    #[test]
    fn error_messages_name_key_and_rule() {
        let msg = validate_fact("a-b", "v").expect_err("invalid").to_string();
        assert!(
            msg.contains("\"a-b\"") && msg.contains("[A-Za-z_][A-Za-z0-9_]*"),
            "{msg}"
        );
        let msg = validate_fact("rack", "a\nb")
            .expect_err("invalid")
            .to_string();
        assert!(msg.contains("\"rack\"") && msg.contains("U+000A"), "{msg}");
        let msg = validate_fact("in", "v").expect_err("reserved").to_string();
        assert!(msg.contains("\"in\"") && msg.contains("keyword"), "{msg}");
        let over = "v".repeat(MAX_FACT_VALUE_LEN + 1);
        let msg = validate_fact("rack", &over).expect_err("long").to_string();
        assert!(msg.contains("\"rack\"") && msg.contains("1024"), "{msg}");
        // Huge inputs are quoted shortened, on a char boundary.
        let huge = "é".repeat(10_000);
        let msg = parse_fact_arg(&huge).expect_err("no =").to_string();
        assert!(msg.len() < 200, "{msg}");
    }

    #[test]
    fn parse_fact_arg_accepts() {
        let ok = |arg: &str, k: &str, v: &str| {
            assert_eq!(
                parse_fact_arg(arg),
                Ok((k.to_owned(), v.to_owned())),
                "{arg}"
            );
        };
        ok("rack=r12", "rack", "r12");
        ok("url=http://x/?a=b", "url", "http://x/?a=b");
        ok("empty=", "empty", "");
        ok("role= spaced value ", "role", " spaced value ");
    }

    #[test]
    fn parse_fact_arg_rejects() {
        assert_eq!(
            parse_fact_arg("novalue"),
            Err(FactError::MissingSeparator {
                arg: "novalue".into()
            })
        );
        assert_eq!(
            parse_fact_arg(""),
            Err(FactError::MissingSeparator { arg: String::new() })
        );
        assert_eq!(parse_fact_arg("=v"), Err(FactError::EmptyKey));
        assert!(matches!(
            parse_fact_arg(" rack=v"),
            Err(FactError::InvalidKeyChar {
                ch: ' ',
                pos: 0,
                ..
            })
        ));
        assert!(matches!(
            parse_fact_arg("rack =v"),
            Err(FactError::InvalidKeyChar {
                ch: ' ',
                pos: 4,
                ..
            })
        ));
        assert!(matches!(
            parse_fact_arg("rack=a\nb"),
            Err(FactError::ControlCharInValue { .. })
        ));
        assert!(matches!(
            parse_fact_arg("null=1"),
            Err(FactError::ReservedKey { .. })
        ));
    }
}
