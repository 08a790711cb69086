//! Checks every admin request passes before its handler: an optional bearer
//! token; a `Host` that is an IP address or `localhost` (a web page cannot
//! reach the API through a DNS name it controls, the "DNS rebinding" attack);
//! and bodies declared as JSON (a browser's cross-site "simple" request
//! cannot send that content type without asking first).

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use subtle::ConstantTimeEq;

use super::json::ErrorBody;

/// What the guard enforces.
#[derive(Clone, Default)]
pub struct Guard {
    /// Bearer token every request must carry, if set.
    pub token: Option<String>,
    /// Requests refused for their token or their `Host`.
    pub refusals: Refusals,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// Least time between two warnings of refused requests.
const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Requests the guard refused (a wrong or missing token, a foreign
/// `Host`): counted for `/metrics` and logged at most once a minute, so
/// that guessing at the token shows.
#[derive(Clone, Default, Debug)]
pub struct Refusals {
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
    warned: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

impl Refusals {
    /// How many requests were refused.
    pub fn count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn note(&self, code: &str, why: &str, client: Option<std::net::SocketAddr>) {
        let n = self
            .count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if warned.is_none_or(|at| now.duration_since(at) >= WARN_EVERY) {
            *warned = Some(now);
            let from = client.map_or_else(String::new, |c| format!(" from {c}"));
            tracing::warn!(
                code,
                refused = n,
                "admin request{from} refused: {why} ({n} refused so far; logged once a minute)"
            );
        }
    }
}

pub(super) fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(ErrorBody {
            error: code.into(),
            message: message.into(),
        }),
    )
        .into_response()
}

/// Whether a `Host` header names an IP address or localhost.
/// A port, when given, is a port: nothing else follows the name.
pub fn host_allowed(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        // [v6] or [v6]:port
        let Some((name, after)) = rest.split_once(']') else {
            return false;
        };
        match after {
            "" => (name, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (name, Some(port)),
                None => return false,
            },
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    let port_ok =
        port.is_none_or(|p| p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok());
    port_ok && (name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok())
}

/// Refuses to serve on a non-loopback address without a token.
pub fn check_exposure(addr: std::net::SocketAddr, guard: &Guard) -> std::io::Result<()> {
    if addr.ip().is_loopback() || guard.token.as_deref().is_some_and(|t| !t.is_empty()) {
        return Ok(());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!("the admin API on {addr} would be reachable from other hosts without a token"),
    ))
}

/// The token of an `Authorization: Bearer <token>` value; the scheme's
/// name is case-insensitive (RFC 9110, section 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

/// Why a request does not pass the token check, if it does not: an
/// operator who sent a token learns that this one is wrong, not missing.
fn token_refusal(headers: &HeaderMap, token: &str) -> Option<&'static str> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Some("this agent's admin API needs its token (--token or TRIBE_ADMIN_TOKEN)");
    };
    let given = value
        .to_str()
        .ok()
        .and_then(bearer_token)
        .unwrap_or_default();
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        None
    } else {
        Some(
            "token rejected: the token sent is not this agent's admin token \
             (--token or TRIBE_ADMIN_TOKEN, sent as `Authorization: Bearer TOKEN`)",
        )
    }
}

/// Why a request is refused for where it is addressed, if it is.
fn host_refusal(headers: &axum::http::HeaderMap, uri: &axum::http::Uri) -> Option<&'static str> {
    if addressed_by_ip(headers, uri) {
        return None;
    }
    let hosts = headers.get_all(header::HOST).iter().count();
    Some(match hosts {
        0 => "the request has no Host header (the admin API wants one naming an IP address or localhost)",
        1 if headers.get(header::HOST).is_some_and(|h| h.to_str().is_err()) => {
            "the request's Host header is not text"
        }
        1 => "the admin API answers only requests addressed to an IP address or localhost",
        _ => "the request carries two Host headers (the admin API takes one)",
    })
}

/// Whether a request is addressed to an IP address or localhost: one Host
/// header (HTTP/1.1 always sends one; two are refused, as RFC 9112 wants,
/// and one that is not text too, rather than let through unchecked), and
/// the target's own host when the request line names one (absolute form,
/// which then counts over `Host`).
fn addressed_by_ip(headers: &axum::http::HeaderMap, uri: &axum::http::Uri) -> bool {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(h), None) => h.to_str().ok(),
        _ => None,
    };
    host.is_some_and(host_allowed) && uri.authority().is_none_or(|a| host_allowed(a.as_str()))
}

/// The middleware.
pub async fn check(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let client = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    let headers = request.headers();
    if let Some(why) = guard
        .token
        .as_deref()
        .and_then(|t| token_refusal(headers, t))
    {
        guard.refusals.note("unauthorized", why, client);
        return refuse(StatusCode::UNAUTHORIZED, "unauthorized", why);
    }
    if let Some(why) = host_refusal(headers, request.uri()) {
        guard.refusals.note("forbidden_host", why, client);
        return refuse(StatusCode::FORBIDDEN, "forbidden_host", why);
    }
    let has_body = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v != "0")
        || headers.contains_key(header::TRANSFER_ENCODING);
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        // The media type before any parameter (`; charset=utf-8`), which
        // is case-insensitive (RFC 9110): `application/jsonp` is not it.
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    // Any method: a body is JSON or nothing, as the docs say.
    if has_body && !json {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "request bodies must be sent as application/json",
        );
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::{
        addressed_by_ip, bearer_token, check_exposure, host_allowed, host_refusal, token_refusal,
        Guard,
    };
    use axum::http::{header::AUTHORIZATION, HeaderMap};

    /// Two Host headers, or a request line naming another host, are not
    /// addressed to an IP address, whatever the first Host says.
    #[test]
    fn one_host_and_the_targets_own_must_be_addresses() {
        let with = |hosts: &[&str]| {
            let mut h = HeaderMap::new();
            for v in hosts {
                h.append(axum::http::header::HOST, v.parse().unwrap());
            }
            h
        };
        let path: axum::http::Uri = "/v1/status".parse().unwrap();
        assert!(addressed_by_ip(&with(&["127.0.0.1:8080"]), &path));
        assert!(!addressed_by_ip(&with(&[]), &path));
        assert!(!addressed_by_ip(
            &with(&["127.0.0.1", "evil.example"]),
            &path
        ));
        assert!(!addressed_by_ip(&with(&["127.0.0.1", "127.0.0.1"]), &path));
        let other: axum::http::Uri = "http://evil.example/v1/status".parse().unwrap();
        assert!(!addressed_by_ip(&with(&["127.0.0.1"]), &other));
        let ours: axum::http::Uri = "http://127.0.0.1:8080/v1/status".parse().unwrap();
        assert!(addressed_by_ip(&with(&["127.0.0.1"]), &ours));
        // Each refusal says what was wrong.
        let why = |hosts: &[&str]| host_refusal(&with(hosts), &path).unwrap_or("");
        assert!(why(&[]).contains("no Host header"));
        assert!(why(&["127.0.0.1", "127.0.0.1"]).contains("two Host headers"));
        assert!(why(&["evil.example"]).contains("addressed to an IP address"));
        assert_eq!(host_refusal(&with(&["localhost:80"]), &path), None);
    }

    #[test]
    fn a_wrong_token_is_told_apart_from_a_missing_one() {
        let mut headers = HeaderMap::new();
        let missing = token_refusal(&headers, "s3cret").unwrap();
        assert!(missing.contains("needs its token"), "{missing}");
        for wrong in ["Bearer wrong", "Bearer ", "Basic s3cret"] {
            headers.insert(AUTHORIZATION, wrong.parse().unwrap());
            let refusal = token_refusal(&headers, "s3cret").unwrap();
            assert!(refusal.starts_with("token rejected"), "{wrong}: {refusal}");
        }
        headers.insert(AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert_eq!(token_refusal(&headers, "s3cret"), None);
    }

    #[test]
    fn a_reachable_admin_api_needs_a_token() {
        let open = Guard::default();
        let empty = Guard {
            token: Some(String::new()),
            ..Guard::default()
        };
        let token = Guard {
            token: Some("t".into()),
            ..Guard::default()
        };
        for loopback in ["127.0.0.1:7947", "127.9.9.9:1", "[::1]:7947"] {
            assert!(check_exposure(loopback.parse().unwrap(), &open).is_ok());
        }
        for reachable in ["0.0.0.0:7947", "10.1.2.3:7947", "[::]:7947"] {
            let addr = reachable.parse().unwrap();
            assert!(check_exposure(addr, &open).is_err(), "{reachable}");
            assert!(check_exposure(addr, &empty).is_err(), "{reachable}");
            assert!(check_exposure(addr, &token).is_ok(), "{reachable}");
        }
    }

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        for (value, token) in [
            ("Bearer s3cret", Some("s3cret")),
            ("bearer s3cret", Some("s3cret")),
            ("BEARER  s3cret", Some("s3cret")),
            ("Basic s3cret", None),
            ("Bearers3cret", None),
            ("", None),
        ] {
            assert_eq!(bearer_token(value), token, "{value:?}");
        }
    }

    #[test]
    fn only_addresses_and_localhost_are_allowed_hosts() {
        for ok in [
            "127.0.0.1:7947",
            "localhost:7947",
            "[::1]:7947",
            "[::1]",
            "10.0.0.5",
            "LOCALHOST",
        ] {
            assert!(host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example:7947",
            "attacker.test",
            "127.0.0.1.nip.io:7947",
            "",
            "localhost:80@evil",
            "[::1]evil",
            "[::1]:",
            "127.0.0.1:99999",
            "127.0.0.1:+80",
        ] {
            assert!(!host_allowed(bad), "{bad}");
        }
    }
}
