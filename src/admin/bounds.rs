//! Bounds on each admin request: a deadline for reading its body and
//! answering it, and the refusals of axum's own extractors (a body over
//! its limit) in the API's JSON error shape.

use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::guard::refuse;

/// How long one request may take to send its body and be answered.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest request body the API reads (axum's default limit).
pub const MAX_BODY: usize = 2 * 1024 * 1024;

/// The middleware.
pub async fn bound(request: Request, next: Next) -> Response {
    // A body declared over the limit is refused before any of it is waited
    // for (axum's limit acts only as the body is read).
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return closing(too_large());
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Err(_) => closing(refuse(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request was not sent and answered within 30 s",
        )),
        Ok(response)
            if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json(&response) =>
        {
            closing(too_large())
        }
        // Any other refusal of axum's (a body that could not be read, a path
        // segment that is not UTF-8) in the API's one error shape.
        Ok(response)
            if (response.status().is_client_error() || response.status().is_server_error())
                && !is_json(&response) =>
        {
            let status = response.status();
            let text = axum::body::to_bytes(response.into_body(), 4096)
                .await
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let message = if text.trim().is_empty() {
                status.canonical_reason().unwrap_or("refused").to_owned()
            } else {
                text.trim().to_owned()
            };
            refuse(status, code_of(status), &message)
        }
        Ok(response) => response,
    }
}

fn too_large() -> Response {
    refuse(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        "the request body is over 2 MiB",
    )
}

/// Says the connection closes after this answer: the rest of the
/// request's body was not read, so the server drops the connection, and a
/// client that kept it for its next request would see that one fail.
fn closing(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// The error code of a refusal that carries none.
fn code_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    }
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}
