//! Handlers of the admin API: each turns a request into one node call and
//! the result into JSON; every failure is an [`ErrorBody`] with a 4xx/5xx.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;

use super::json::{
    AddTask, CreateTribe, ErrorBody, InstallKey, JoinCluster, Joined, Keys, LoadPlugin, Member,
    NewPolicy, Plugin, PolicyJson, SetEncryption, SetFact, Status, TaskJson, Tribe,
};
use super::metrics;
use crate::{Error, KeyId, Node, SecretKey, TaskState};

/// An error response.
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        // A key sent under the wrong field or value is not quoted back.
        let message = crate::keyfile::withhold_keys(&message.into()).into_owned();
        ApiError {
            status,
            body: ErrorBody {
                error: code.to_string(),
                message,
            },
        }
    }

    pub(super) fn not_found(what: &str) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    pub(super) fn method_not_allowed() -> Self {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method",
        )
    }
}

/// A request no route takes.
pub(super) async fn no_route() -> ApiError {
    ApiError::not_found("no such route")
}

/// Refuses, before routing, a path with an empty segment where the API
/// has names (`DELETE /v1/tribes/`, `PUT /v1/tribes/t/tasks//start`: what
/// `tribe tribe delete ""` sends): it names nothing, and says so as the
/// libraries do, whatever route it would reach ("no such route", or an
/// unknown task named "").
pub(super) async fn refuse_empty_names(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let segments: Vec<&str> = request
        .uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .collect();
    let named = ["tribes", "policies", "facts", "keys", "members"];
    if segments.len() > 2
        && segments[0] == "v1"
        && named.contains(&segments[1])
        && segments[2..].contains(&"")
    {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_name",
            "a name in the path is empty",
        )
        .into_response();
    }
    next.run(request).await
}

fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::InvalidName { .. }
        | Error::InvalidArgument(_)
        | Error::InvalidPolicy(_)
        | Error::Config(_) => StatusCode::BAD_REQUEST,
        Error::NoKeyring
        | Error::EncryptionNotRequired
        | Error::KeyringFull
        | Error::PrimaryKey(_) => StatusCode::CONFLICT,
        Error::UnknownKey(_) => StatusCode::NOT_FOUND,
        Error::NoProvider { .. } | Error::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
        Error::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        Error::Remote { .. } | Error::Disconnected { .. } => StatusCode::BAD_GATEWAY,
        Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::UnknownTribe(_)
        | Error::UnknownNode(_)
        | Error::NotMember { .. }
        | Error::UnknownPolicy(_)
        | Error::UnknownPlugin { .. }
        | Error::UnknownTask { .. }
        | Error::UnknownFact(_) => StatusCode::NOT_FOUND,
        Error::TribeExists(_)
        | Error::AlreadyMember { .. }
        | Error::PolicyExists(_)
        | Error::PluginExists { .. }
        | Error::TaskExists { .. }
        | Error::LimitReached { .. }
        | Error::KeyNotSpread { .. } => StatusCode::CONFLICT,
        Error::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError::new(status_of(&e), e.code(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Parses a JSON body, turning every malformed one into a 400 with the reason.
/// A body is one object (serde would take an array for a struct, field by
/// field). The reason quotes no value from the body: a key sent in the wrong
/// shape would be echoed into the client's output and logs.
fn parse<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    let invalid = |why: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", why);
    // A byte-order mark is ignored, as RFC 8259 allows.
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    // Parsed straight into `T` (a field given twice is refused), once the
    // body is seen to be an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(invalid("the body must be a JSON object".into()));
    }
    serde_json::from_slice(body).map_err(|e| invalid(super::withhold_values(&e.to_string())))
}

/// A write route that takes no body refuses one: a field sent to it
/// would otherwise be dropped unseen.
fn no_body(body: &Bytes) -> ApiResult<()> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "this route takes no body",
    ))
}

fn created<T: serde::Serialize>(value: T) -> Response {
    (StatusCode::CREATED, Json(value)).into_response()
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

pub(super) async fn status(State(node): State<Node>) -> Json<Status> {
    Json(Status::of(&node))
}

pub(super) async fn members(State(node): State<Node>) -> Json<Vec<Member>> {
    Json(node.members().iter().map(Member::from).collect())
}

pub(super) async fn member(
    State(node): State<Node>,
    Path(name): Path<String>,
) -> ApiResult<Json<Member>> {
    node.members()
        .iter()
        .find(|m| m.name == name)
        .map(|m| Json(Member::from(m)))
        .ok_or_else(|| Error::UnknownNode(name).into())
}

pub(super) async fn tribes(State(node): State<Node>) -> Json<Vec<Tribe>> {
    Json(node.tribes().iter().map(Tribe::from).collect())
}

pub(super) async fn tribe(
    State(node): State<Node>,
    Path(name): Path<String>,
) -> ApiResult<Json<Tribe>> {
    node.tribe(&name)
        .map(|t| Json(Tribe::from(&t)))
        .ok_or_else(|| Error::UnknownTribe(name).into())
}

pub(super) async fn create_tribe(State(node): State<Node>, body: Bytes) -> ApiResult<Response> {
    let req: CreateTribe = parse(&body)?;
    node.create_tribe(&req.name).await?;
    let tribe = node
        .tribe(&req.name)
        .ok_or_else(|| Error::UnknownTribe(req.name.clone()))?;
    Ok(created(Tribe::from(&tribe)))
}

pub(super) async fn delete_tribe(
    State(node): State<Node>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    no_body(&body)?;
    node.delete_tribe(&name).await?;
    Ok(no_content())
}

pub(super) async fn join(
    State(node): State<Node>,
    Path((tribe, member)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    no_body(&body)?;
    node.join(&tribe, &member).await?;
    Ok(no_content())
}

pub(super) async fn leave(
    State(node): State<Node>,
    Path((tribe, member)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    no_body(&body)?;
    node.leave(&tribe, &member).await?;
    Ok(no_content())
}

pub(super) async fn policies(State(node): State<Node>) -> Json<Vec<PolicyJson>> {
    Json(node.policies().iter().map(PolicyJson::from).collect())
}

pub(super) async fn policy(
    State(node): State<Node>,
    Path(name): Path<String>,
) -> ApiResult<Json<PolicyJson>> {
    node.policies()
        .iter()
        .find(|p| p.name == name)
        .map(|p| Json(PolicyJson::from(p)))
        .ok_or_else(|| Error::UnknownPolicy(name).into())
}

pub(super) async fn add_policy(State(node): State<Node>, body: Bytes) -> ApiResult<Response> {
    let req: NewPolicy = parse(&body)?;
    node.add_policy(&req.name, &req.tribe, &req.when).await?;
    Ok(created(PolicyJson {
        name: req.name,
        tribe: req.tribe,
        when: req.when,
    }))
}

pub(super) async fn remove_policy(
    State(node): State<Node>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    no_body(&body)?;
    node.remove_policy(&name).await?;
    Ok(no_content())
}

pub(super) async fn load_plugin(
    State(node): State<Node>,
    Path(tribe): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: LoadPlugin = parse(&body)?;
    let kind = req.kind.parse()?;
    node.load_plugin(&tribe, &req.name, &req.version, kind, None)
        .await?;
    Ok(created(Plugin {
        name: req.name,
        version: req.version,
        kind: req.kind,
        sha256: None,
        size: None,
    }))
}

pub(super) async fn unload_plugin(
    State(node): State<Node>,
    Path((tribe, name, version)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    no_body(&body)?;
    node.unload_plugin(&tribe, &name, &version).await?;
    Ok(no_content())
}

fn task_state(s: Option<&str>) -> ApiResult<TaskState> {
    match s {
        None | Some("running") => Ok(TaskState::Running),
        Some("stopped") => Ok(TaskState::Stopped),
        Some(other) => Err(Error::InvalidArgument(format!(
            "task state {other:?} is not running or stopped"
        ))
        .into()),
    }
}

pub(super) async fn add_task(
    State(node): State<Node>,
    Path(tribe): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: AddTask = parse(&body)?;
    let state = task_state(req.state.as_deref())?;
    let manifest = req.manifest.to_string();
    // The id and the tribe are checked as the command would, first: their
    // errors keep their own codes.
    crate::names::check("task id", &req.id)?;
    if node.tribe(&tribe).is_none() {
        return Err(Error::UnknownTribe(tribe).into());
    }
    // The agents run what this API adds: a manifest they would refuse to
    // run is refused here, naming the field.
    crate::workflow::manifest::Manifest::parse(&req.id, &manifest).map_err(|e| {
        use crate::workflow::manifest::ManifestError;
        // A size or JSON error names the manifest itself; a field's does not.
        let message = match e {
            ManifestError::Invalid { .. } => format!("task manifest: {e}"),
            // Parsed from the value written out again, compact: a line and
            // column there point into text the client never sent.
            ManifestError::Json { what, message } => ManifestError::Json {
                what,
                message: without_position(&message).to_string(),
            }
            .to_string(),
            _ => e.to_string(),
        };
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_manifest", message)
    })?;
    node.add_task(&tribe, &req.id, &manifest, state).await?;
    Ok(created(TaskJson {
        id: req.id,
        state: state.as_str().to_string(),
        manifest: req.manifest,
    }))
}

/// A JSON parser's message without its trailing ` at line L column C`.
fn without_position(message: &str) -> &str {
    match message.rsplit_once(" at line ") {
        Some((head, tail))
            if tail
                .split_once(" column ")
                .is_some_and(|(l, c)| l.parse::<u64>().is_ok() && c.parse::<u64>().is_ok()) =>
        {
            head
        }
        _ => message,
    }
}

pub(super) async fn remove_task(
    State(node): State<Node>,
    Path((tribe, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    no_body(&body)?;
    node.remove_task(&tribe, &id).await?;
    Ok(no_content())
}

pub(super) async fn start_task(
    State(node): State<Node>,
    Path((tribe, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    no_body(&body)?;
    node.set_task_state(&tribe, &id, TaskState::Running).await?;
    Ok(no_content())
}

pub(super) async fn stop_task(
    State(node): State<Node>,
    Path((tribe, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    no_body(&body)?;
    node.set_task_state(&tribe, &id, TaskState::Stopped).await?;
    Ok(no_content())
}

pub(super) async fn facts(State(node): State<Node>) -> ApiResult<Response> {
    let me = node
        .members()
        .into_iter()
        .find(|m| m.is_local)
        .ok_or(Error::ShuttingDown)?;
    Ok(Json(me.facts).into_response())
}

pub(super) async fn set_fact(
    State(node): State<Node>,
    Path(key): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: SetFact = parse(&body)?;
    node.set_fact(&key, &req.value).await?;
    Ok(no_content())
}

pub(super) async fn remove_fact(
    State(node): State<Node>,
    Path(key): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    no_body(&body)?;
    node.remove_fact(&key).await?;
    Ok(no_content())
}

pub(super) async fn keys(State(node): State<Node>) -> Json<Keys> {
    Json(Keys::from(&node.keyring_status()))
}

fn key_id(text: &str) -> ApiResult<KeyId> {
    text.parse().map_err(|_| {
        // Repeated only when too short to be a key (44 characters): the
        // CLI takes a key or its id, and a path does not (proxies log it).
        let given = if text.len() <= 16 {
            format!("{text:?}")
        } else {
            format!("the text given ({} bytes)", text.len())
        };
        Error::InvalidArgument(format!(
            "{given} is not a key id (8 hex digits; `tribe keys` lists them)"
        ))
        .into()
    })
}

pub(super) async fn install_key(State(node): State<Node>, body: Bytes) -> ApiResult<Response> {
    let req: InstallKey = parse(&body)?;
    let key =
        SecretKey::from_base64(&req.key).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let id = key.id();
    node.install_key(key).await?;
    // Answered once every live node holds it: a ring full elsewhere (keys
    // installed at once through other agents) is told, not hidden.
    node.wait_key_installed(id).await?;
    Ok(created(serde_json::json!({ "id": id.to_string() })))
}

pub(super) async fn use_key(
    State(node): State<Node>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    no_body(&body)?;
    node.use_key(key_id(&id)?).await?;
    Ok(no_content())
}

pub(super) async fn remove_key(
    State(node): State<Node>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    no_body(&body)?;
    node.remove_key(key_id(&id)?).await?;
    Ok(no_content())
}

/// Joins the cluster through the addresses given (`Node::join_cluster`).
/// When none completed its exchange: 502, as a proxy whose upstreams all
/// failed (the agent itself is fine).
pub(super) async fn join_cluster(State(node): State<Node>, body: Bytes) -> ApiResult<Response> {
    let req: JoinCluster = parse(&body)?;
    match node.join_cluster(&req.addrs).await {
        Ok(joined) => Ok(Json(Joined { joined }).into_response()),
        Err(e @ Error::Io(_)) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            e.code(),
            e.to_string(),
        )),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn set_encryption(State(node): State<Node>, body: Bytes) -> ApiResult<Response> {
    let req: SetEncryption = parse(&body)?;
    node.set_encryption(req.mode.parse()?).await?;
    Ok(no_content())
}

pub(super) async fn prometheus(
    State(node): State<Node>,
    axum::Extension(refusals): axum::Extension<super::guard::Refusals>,
    axum::Extension(task_runs): axum::Extension<super::TaskRuns>,
    headers: axum::http::HeaderMap,
) -> Response {
    let text = metrics::render(&metrics::Snapshot {
        members: node.members(),
        tribes: node.tribes(),
        policies: node.policies().len(),
        counters: node.counters(),
        broadcast_backlog: node.broadcast_backlog(),
        keys_held: node
            .keyring_status()
            .keys
            .iter()
            .filter(|k| k.installed_on.iter().any(|n| n == node.name()))
            .count(),
        rpc: node.rpc_stats(),
        name_held_elsewhere: node.name_held_by().is_some(),
        key_refused: node.key_refused_by().is_some(),
        admin_refusals: refusals.count(),
        task_runs: task_runs.counts(),
    });
    // OpenMetrics for a scraper that asks for it (Prometheus does), the
    // classic text format for the rest (curl, promtool, older agents).
    let openmetrics = metrics::wants_openmetrics(
        headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            metrics::classic(&text),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::without_position;

    #[test]
    fn a_position_in_text_the_client_never_sent_is_left_out() {
        assert_eq!(
            without_position("unknown field `timeout`, expected `interval` at line 1 column 113"),
            "unknown field `timeout`, expected `interval`"
        );
        assert_eq!(without_position("EOF while parsing"), "EOF while parsing");
        assert_eq!(without_position("at line one"), "at line one");
    }
}
