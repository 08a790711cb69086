//! Metric-name globs, as listed in a manifest's `collect.metrics`: which
//! patterns are acceptable and which names a pattern matches.

use super::manifest::has_control;

/// Longest metric pattern, in bytes.
pub const MAX_PATTERN_LEN: usize = 128;

/// Why a metric pattern is refused, if it is; shared with the collectors,
/// which take patterns from callers too.
pub fn pattern_problem(pattern: &str) -> Option<&'static str> {
    if pattern.is_empty() {
        Some("is empty")
    } else if pattern.len() > MAX_PATTERN_LEN {
        Some("is longer than 128 bytes")
    } else if has_control(pattern) {
        Some("holds control characters")
    } else {
        None
    }
}

/// Whether metric `name` matches glob `pattern`: `*` matches any run of
/// characters (`/` included, possibly none); everything else matches itself.
pub fn metric_matches(pattern: &str, name: &str) -> bool {
    let Some((head, tail)) = pattern.split_once('*') else {
        return pattern == name;
    };
    let (middle, last) = tail.rsplit_once('*').unwrap_or(("", tail));
    // Strip the fixed ends first so they cannot overlap the middle pieces.
    let Some(rest) = name.strip_prefix(head) else {
        return false;
    };
    let Some(mut rest) = rest.strip_suffix(last) else {
        return false;
    };
    // With only `*` between pieces, taking each piece at its leftmost place
    // leaves the most room for the next, so no backtracking is needed.
    for piece in middle.split('*').filter(|p| !p.is_empty()) {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matching() {
        for (pattern, name, expected) in [
            ("load/1min", "load/1min", true),
            ("load/1min", "load/5min", false),
            ("*", "", true),
            ("*", "a/b/c", true),
            ("load/*", "load/1min", true),
            ("load/*", "load/", true),
            ("load/*", "loadx/1min", false),
            ("*/1min", "load/1min", true),
            ("*min", "load/15min", true),
            ("cpu/*/idle", "cpu/0/idle", true),
            ("cpu/*/idle", "cpu/0/1/idle", true),
            ("cpu/*/idle", "cpu/idle", false),
            ("a*a", "a", false),
            ("a*a", "aa", true),
            ("a*b*c", "abc", true),
            ("a*b*c", "acb", false),
            ("a*b*b*c", "abbc", true),
            ("a*b*b*c", "abc", false),
            ("**", "x", true),
            ("a**b", "ab", true),
            ("*é*", "café/x", true),
            ("", "", true),
            ("", "x", false),
        ] {
            assert_eq!(
                metric_matches(pattern, name),
                expected,
                "{pattern} ~ {name}"
            );
        }
    }
}
