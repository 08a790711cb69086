//! The admin HTTP API (JSON, modelled on snap's `/v1/tribe` routes): reads
//! of members, tribes and policies, the mutating operations, and Prometheus
//! `/metrics`. It listens only where it is told to.
//!
//! | route | does |
//! | --- | --- |
//! | `GET /v1/status` | `name`, `addr`, `members_alive`, `state_digest`, `tribes` |
//! | `GET /v1/members`, `GET /v1/members/{name}` | members with state, facts, tribes, endpoints |
//! | `GET /v1/tribes`, `POST /v1/tribes {"name"}` | list, create |
//! | `GET`, `DELETE /v1/tribes/{name}` | one tribe (members, plugins, tasks), delete |
//! | `PUT`, `DELETE /v1/tribes/{name}/members/{node}` | membership by hand |
//! | `GET`, `POST /v1/policies {"name","tribe","when"}` | list, add |
//! | `GET`, `DELETE /v1/policies/{name}` | one policy, remove |
//! | `POST /v1/tribes/{name}/plugins {"name","version","kind"}` | load into the catalog |
//! | `DELETE /v1/tribes/{name}/plugins/{plugin}/{version}` | unload |
//! | `POST /v1/tribes/{name}/tasks {"id","manifest","state"?}` | add a task |
//! | `DELETE /v1/tribes/{name}/tasks/{id}` | remove a task |
//! | `PUT /v1/tribes/{name}/tasks/{id}/start`, `.../stop` | desired state |
//! | `GET /v1/facts`, `PUT /v1/facts/{key} {"value"}`, `DELETE /v1/facts/{key}` | this node's facts |
//! | `GET /v1/keys` | key ids held by the live nodes, and which is primary where |
//! | `POST /v1/keys {"key"}` | install a key on every node |
//! | `PUT /v1/keys/{id}/primary` | make it every node's primary |
//! | `DELETE /v1/keys/{id}` | remove it from every node (not the primary) |
//! | `PUT /v1/encryption {"mode"}` | this node's mode: `accept`, `send`, `require` |
//! | `GET /metrics` | Prometheus text |
//!
//! Errors are `{"error": code, "message": text}` with a 4xx/5xx status; the
//! codes are [`crate::Error::code`] plus `invalid_json`, `invalid_manifest`
//! (a task manifest the agents could not run), `not_found`,
//! `method_not_allowed`, `request_timeout` (a request not sent and
//! answered within 30 s; a body over 2 MiB is `too_large`) and
//! `bad_request` (a body that cannot be read, a path that is not UTF-8);
//! the guard's `unauthorized` (no token, or `token rejected`),
//! `forbidden_host` and `unsupported_media_type`; and `internal` for a
//! failure of the server itself.
//! Write bodies with an unknown field are `invalid_json`.

mod bounds;
pub mod guard;
pub mod json;
pub mod metrics;
mod places;
mod routes;
mod server;
mod task_runs;

pub use task_runs::{TaskOutcome, TaskRunCounts, TaskRuns};

use std::future::Future;

use axum::routing::{get, put};
use axum::Router;

use crate::Node;

/// `why`, a parser's message about input that may hold a key or a token
/// (an admin API body, the agent's config file), with each quoted string in
/// it withheld, and each name in backticks of 20 characters or more (longer
/// than any field's or option's: a key given as a name).
#[doc(hidden)]
pub fn withhold_values(why: &str) -> String {
    static QUOTED: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r#""(?:[^"\\]|\\.)*"|`[^`]{20,}`"#).expect("a valid regex")
    });
    QUOTED.replace_all(why, "(a value, withheld)").into_owned()
}

/// The admin API's routes over one node, behind `guard`.
pub(crate) fn router(node: Node, guard: guard::Guard, task_runs: TaskRuns) -> Router {
    Router::new()
        .route("/v1/status", get(routes::status))
        .route("/v1/members", get(routes::members))
        .route("/v1/members/{name}", get(routes::member))
        .route("/v1/tribes", get(routes::tribes).post(routes::create_tribe))
        .route(
            "/v1/tribes/{name}",
            get(routes::tribe).delete(routes::delete_tribe),
        )
        .route(
            "/v1/tribes/{name}/members/{node}",
            put(routes::join).delete(routes::leave),
        )
        .route(
            "/v1/policies",
            get(routes::policies).post(routes::add_policy),
        )
        .route(
            "/v1/policies/{name}",
            get(routes::policy).delete(routes::remove_policy),
        )
        .route(
            "/v1/tribes/{name}/plugins",
            axum::routing::post(routes::load_plugin),
        )
        .route(
            "/v1/tribes/{name}/plugins/{plugin}/{version}",
            axum::routing::delete(routes::unload_plugin),
        )
        .route(
            "/v1/tribes/{name}/tasks",
            axum::routing::post(routes::add_task),
        )
        .route(
            "/v1/tribes/{name}/tasks/{id}",
            axum::routing::delete(routes::remove_task),
        )
        .route(
            "/v1/tribes/{name}/tasks/{id}/start",
            put(routes::start_task),
        )
        .route("/v1/tribes/{name}/tasks/{id}/stop", put(routes::stop_task))
        .route("/v1/facts", get(routes::facts))
        .route(
            "/v1/facts/{key}",
            put(routes::set_fact).delete(routes::remove_fact),
        )
        .route("/v1/keys", get(routes::keys).post(routes::install_key))
        .route("/v1/keys/{id}", axum::routing::delete(routes::remove_key))
        .route("/v1/keys/{id}/primary", put(routes::use_key))
        .route("/v1/encryption", put(routes::set_encryption))
        .route("/v1/join", axum::routing::post(routes::join_cluster))
        .route("/metrics", get(routes::prometheus))
        .fallback(routes::no_route)
        .method_not_allowed_fallback(|| async { routes::ApiError::method_not_allowed() })
        .with_state(node)
        .layer(axum::middleware::from_fn(routes::refuse_empty_names))
        .layer(axum::Extension(guard.refusals.clone()))
        .layer(axum::Extension(task_runs))
        .layer(axum::middleware::from_fn_with_state(guard, guard::check))
        .layer(axum::extract::DefaultBodyLimit::max(bounds::MAX_BODY))
        .layer(axum::middleware::from_fn(bounds::bound))
}

/// Serves the admin API on `listener` until `shutdown` completes, then
/// lets requests being answered finish for a few seconds. A listener other
/// hosts can reach is refused unless the guard holds a token: the API
/// changes the whole tribe. Clients that stall get cut (see `server`).
pub async fn serve(
    node: Node,
    listener: tokio::net::TcpListener,
    guard: guard::Guard,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_tasks(node, listener, guard, TaskRuns::default(), shutdown).await
}

/// [`serve`] for a host that runs tasks: `/metrics` also reports the runs
/// it notes in `task_runs` (`tribe_tasks_running`,
/// `tribe_task_runs_total{tribe,task,outcome}`).
pub async fn serve_with_tasks(
    node: Node,
    listener: tokio::net::TcpListener,
    guard: guard::Guard,
    task_runs: TaskRuns,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    guard::check_exposure(listener.local_addr()?, &guard)?;
    let bounds = server::Bounds::default();
    server::run(listener, router(node, guard, task_runs), bounds, shutdown).await
}

/// One admin write as the router would dispatch it, for the fuzz targets:
/// `route` picks the handler, `segment` fills its path, `body` is the raw
/// request body. Returns the response status.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) async fn fuzz_write(
    node: Node,
    route: u8,
    segment: String,
    body: bytes::Bytes,
) -> axum::http::StatusCode {
    use axum::extract::{Path, State};
    use axum::response::IntoResponse;
    let node = State(node);
    let response = match route % 7 {
        0 => routes::create_tribe(node, body).await.into_response(),
        1 => routes::add_policy(node, body).await.into_response(),
        2 => routes::load_plugin(node, Path(segment), body)
            .await
            .into_response(),
        3 => routes::add_task(node, Path(segment), body)
            .await
            .into_response(),
        4 => routes::set_fact(node, Path(segment), body)
            .await
            .into_response(),
        5 => routes::install_key(node, body).await.into_response(),
        _ => routes::set_encryption(node, body).await.into_response(),
    };
    response.status()
}
