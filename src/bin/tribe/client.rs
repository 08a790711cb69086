//! A small blocking client of an agent's admin API, shared by the admin
//! commands and the demo.

use std::net::SocketAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tribe::admin::json::ErrorBody;

/// How long one admin request may take: longer than any wait of the
/// agent's own (a keyring step waits up to 10 s for the tribe to catch up),
/// so its answer is what the user sees.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long connecting to the agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Talks to one agent.
pub struct Admin {
    base: String,
    agent: ureq::Agent,
    /// `Authorization` header value, when the agent requires a token.
    auth: Option<String>,
}

/// What a request came back with: a JSON body, or none (204).
pub type Reply = Option<serde_json::Value>;

impl Admin {
    /// A client of the agent whose admin API listens on `addr`.
    pub fn new(addr: &str, token: Option<String>) -> Admin {
        // Each phase has its own bound and the name lookup none: with an
        // overall bound ureq looks the name up on a thread of its own, and
        // where no thread can be made (`ulimit -u`) it panics.
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_send_request(Some(REQUEST_TIMEOUT))
            .timeout_send_body(Some(REQUEST_TIMEOUT))
            .timeout_recv_response(Some(REQUEST_TIMEOUT))
            .timeout_recv_body(Some(REQUEST_TIMEOUT))
            .build()
            .into();
        // `--admin http://127.0.0.1:7947/` names the same API as
        // `--admin 127.0.0.1:7947`.
        let addr = addr.strip_prefix("http://").unwrap_or(addr);
        let addr = addr.trim_end_matches('/');
        // `--admin 7947`: the port of an agent on this host.
        let base = match addr.parse::<u16>() {
            Ok(port) => format!("http://127.0.0.1:{port}"),
            Err(_) => format!("http://{addr}"),
        };
        Admin {
            base,
            agent,
            auth: token.map(|t| format!("Bearer {t}")),
        }
    }

    /// A client of `addr`.
    pub fn at(addr: SocketAddr) -> Admin {
        Admin::new(&addr.to_string(), None)
    }

    fn authorized<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.auth {
            Some(value) => req.header("Authorization", value),
            None => req,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn finish(
        &self,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Reply, String> {
        // A stable code, as the API's own errors carry, for scripts.
        let mut resp = result
            .map_err(|e| format!("cannot reach the agent at {}: {e} (unreachable)", self.base))?;
        let status = resp.status();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("reading the reply: {e}"))?;
        if !status.is_success() {
            return Err(match serde_json::from_str::<ErrorBody>(&text) {
                // Escaped too: any server may answer in the API's shape.
                Ok(body) => format!("{} ({})", escaped(&body.message), escaped(&body.error)),
                // Not the API's: another server at that address, perhaps.
                // One line, cut, as every failure of the CLI is told.
                Err(_) => format!(
                    "the agent answered {status}: {} (no error of the admin API: is it a tribe agent?)",
                    first_line(&text, 200)
                ),
            });
        }
        if text.trim().is_empty() {
            return Ok(None);
        }
        serde_json::from_str(&text).map(Some).map_err(|e| {
            format!(
                "the agent's reply is not JSON: {e}: {} (is it a tribe agent?)",
                first_line(&text, 200)
            )
        })
    }

    /// GET a JSON value.
    pub fn get_value(&self, path: &str) -> Result<serde_json::Value, String> {
        self.finish(self.authorized(self.agent.get(&self.url(path))).call())?
            .ok_or_else(|| format!("empty reply to GET {path}"))
    }

    /// GET a typed JSON value.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        serde_json::from_value(self.get_value(path)?)
            .map_err(|e| format!("unexpected reply to GET {path}: {e}"))
    }

    /// POST a JSON body.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> Result<Reply, String> {
        self.finish(
            self.authorized(self.agent.post(&self.url(path)))
                .send_json(body),
        )
    }

    /// PUT, with a JSON body or none.
    pub fn put(&self, path: &str, body: Option<&serde_json::Value>) -> Result<Reply, String> {
        let req = self.authorized(self.agent.put(&self.url(path)));
        self.finish(match body {
            Some(b) => req.send_json(b),
            None => req.send_empty(),
        })
    }

    /// DELETE.
    pub fn delete(&self, path: &str) -> Result<Reply, String> {
        self.finish(self.authorized(self.agent.delete(&self.url(path))).call())
    }
}

/// Escapes one path segment (names are restricted, but a user may type anything).
pub fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The first non-empty line of `text`, cut at `max` characters, its
/// control characters escaped (a server's bytes must not drive the
/// terminal).
fn first_line(text: &str, max: usize) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut cut = escaped(&line.chars().take(max).collect::<String>());
    if line.chars().count() > max || text.trim().lines().nth(1).is_some() {
        cut.push_str(" ...");
    }
    cut
}

/// `text` with its control characters escaped.
fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
