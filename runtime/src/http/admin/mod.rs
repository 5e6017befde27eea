//! The admin API: what an operator asks of a running node, as JSON (JSON lives only here).
//!
//! Reads (`/health`, `/services`, `/registry`, `/policies`, `/queues`, `/topics`, `/metrics`
//! in Prometheus's text format, `/live` and the live page at `/`: see [`live`]) and changes
//! (a component upload swaps a service or a policy; a redrive resends a queue's dead letters;
//! a replay rewinds a topic's subscription).
//! Changes go through the [`Operator`] the node implements, so this file knows HTTP and JSON,
//! not how a swap is done.
//!
//! Every request but `GET /health` and `GET /` (the live page's HTML, which holds no data)
//! is checked by [`access`] (its own `Host`, no foreign
//! `Origin`, the bearer token) before its body is read; at most [`MAX_COMPILES`] uploads are
//! read and compiled at once; every change leaves one audit line (target
//! `switchyard::audit`): what, the component's SHA-256, from which address, the outcome.

mod access;
mod live;
mod metrics;
mod state;

pub(crate) use access::{AdminToken, ConnectionInfo, TokenError};
pub(crate) use metrics::MetricsPage;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use sha2::Digest;

use super::ingress::{plain, retry_soon};
use super::server::Handler;
use crate::host::{StateEntry, StateError};
use crate::manifest::StartAt;
use crate::messaging::{QueueError, QueueView, TopicView};
use crate::policy::{BindingView, PolicyError};
use crate::router::RouteError;
use crate::state::StateView;
use crate::util::BoxFuture;
use crate::wasm::{Directory, LoadError, SwapError, SwapEvent};

/// The largest component a swap accepts.
const MAX_UPLOAD_BYTES: usize = 256 * 1024 * 1024;
/// Uploads read and compiled at once; more are answered `429` (a compile takes a core and
/// up to a few hundred MiB).
const MAX_COMPILES: usize = 2;

/// What the admin API asks of a running node (implemented by the node's `Control`, which
/// the manifest watcher drives too). Typed both ways: JSON is made here, from these.
pub(crate) trait Operator: Send + Sync {
    /// `GET /policies`.
    fn policies(&self) -> BoxFuture<'_, Vec<BindingView>>;
    /// `GET /queues`.
    fn queues(&self) -> Vec<QueueView>;
    /// What keeps the node from doing its work now (for `GET /health`): empty when healthy.
    fn problems(&self) -> Vec<String>;
    /// `GET /state`: the state store's size, usage per service, the outbox's lag.
    fn state(&self) -> BoxFuture<'_, Result<StateView, ControlError>>;
    /// `GET /state/<service>/export`: every key of `service`.
    fn export_state(&self, service: String)
    -> BoxFuture<'_, Result<Vec<StateEntry>, ControlError>>;
    /// `POST /state/<service>/import`: makes `entries` the whole state of `service`; how many.
    fn import_state(
        &self,
        service: String,
        entries: Vec<(String, Vec<u8>)>,
    ) -> BoxFuture<'_, Result<usize, ControlError>>;
    /// `POST /queues/<name>/redrive`: sends the queue's dead letters again; how many.
    fn redrive(&self, queue: String) -> BoxFuture<'_, Result<usize, ControlError>>;
    /// `GET /topics`.
    fn topics(&self) -> Vec<TopicView>;
    /// `POST /topics/<name>/replay?subscriber=<service>&from=<start>`: the subscription owes
    /// the kept messages from there on; the offset it starts at.
    fn replay(
        &self,
        topic: String,
        subscriber: String,
        from: StartAt,
    ) -> BoxFuture<'_, Result<u64, ControlError>>;
    /// `POST /policies/<name>` with a component: swaps every binding of that policy.
    fn swap_policy(
        &self,
        name: String,
        component: Upload,
    ) -> BoxFuture<'_, Result<PolicySwapped, ControlError>>;
    /// `POST /services/<name>` with a component: a new generation of that service.
    fn swap_service(
        &self,
        name: String,
        component: Upload,
    ) -> BoxFuture<'_, Result<SwapEvent, ControlError>>;
}

/// A component uploaded through the admin API, hashed once as it arrives: the audit line
/// and the node's record of admin swaps both name it by this hash.
pub(crate) struct Upload {
    pub(crate) bytes: Vec<u8>,
    /// Hex SHA-256 of `bytes`.
    pub(crate) sha256: String,
}

impl Upload {
    fn new(bytes: Vec<u8>) -> Self {
        let sha256 = format!("{:x}", sha2::Sha256::digest(&bytes));
        Self { bytes, sha256 }
    }
}

/// A policy swapped in every binding of it.
#[derive(Debug, serde::Serialize)]
pub(crate) struct PolicySwapped {
    pub(crate) policy: String,
    pub(crate) bindings: usize,
    /// Each binding's new generation.
    pub(crate) generations: Vec<u64>,
    /// How long the swap took, in whole microseconds.
    pub(crate) swap_us: u64,
}

/// Why a change to a running node was refused; what was running keeps running. The admin API
/// answers it with [`ControlError::status`], the manifest watcher logs it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ControlError {
    #[error("this node runs no service `{name}` (it runs: {known})")]
    UnknownService { name: String, known: String },
    #[error("service `{service}`: {cause}")]
    Component { service: String, cause: LoadError },
    #[error(transparent)]
    Swap(#[from] SwapError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(
        "service `{service}`: memory_limit_mb = {asked_mib} is more than the {pool_mib} MiB the \
         instance pool was sized for at start; restart the node to add it"
    )]
    MemoryAbovePool {
        service: String,
        asked_mib: usize,
        pool_mib: usize,
    },
    #[error(
        "the edited manifest's policy bindings need room for {needed} policy instances (3 per \
         binding: its instance, a swap's and a rollback's); this node's instance pool was sized \
         for {sized} at start. Bind fewer policies, or restart the node"
    )]
    PoolTooSmall { needed: u32, sized: u32 },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the change was cut off: {0}")]
    Interrupted(#[from] tokio::task::JoinError),
}

impl ControlError {
    /// The status the admin API answers with: 404 for what does not exist, 409 for what this
    /// node cannot take without a restart, 422 for a component or config that was refused.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::UnknownService { .. }
            | Self::Queue(QueueError::Unknown { .. } | QueueError::UnknownSubscription { .. })
            | Self::Policy(PolicyError::Unknown(_)) => StatusCode::NOT_FOUND,
            Self::MemoryAbovePool { .. } | Self::PoolTooSmall { .. } => StatusCode::CONFLICT,
            Self::State(StateError::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::State(StateError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Interrupted(_)
            | Self::Queue(QueueError::Interrupted(_) | QueueError::DeadLettersKept { .. }) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

/// The admin API: `GET /health`, `/services`, `/registry`, `/policies`, `/queues`, `/topics`;
/// `POST /services/<name>` and `/policies/<name>` (hot swap, the body is the new component),
/// `/queues/<name>/redrive` (send its dead letters again) and
/// `/topics/<name>/replay?subscriber=<service>&from=<start>` (rewind a subscription).
pub(crate) struct Admin {
    node: String,
    services: Arc<Directory>,
    registry: Option<Arc<crate::discovery::Registry>>,
    operator: Arc<dyn Operator>,
    token: AdminToken,
    compiles: tokio::sync::Semaphore,
    metrics: Arc<MetricsPage>,
    live: live::LivePage,
}

#[derive(serde::Serialize)]
struct ServiceView {
    #[serde(flatten)]
    stats: crate::wasm::SlotStats,
    /// As written in the manifest (`GET /hello/{name}`).
    routes: Vec<String>,
}

impl Admin {
    pub(crate) fn new(
        node: String,
        services: Arc<Directory>,
        registry: Option<Arc<crate::discovery::Registry>>,
        operator: Arc<dyn Operator>,
        token: AdminToken,
        metrics: Arc<MetricsPage>,
        transport: Option<Arc<crate::transport::Transport>>,
    ) -> Self {
        Self {
            live: live::LivePage::new(
                node.clone(),
                metrics.clone(),
                services.clone(),
                registry.clone().zip(transport),
            ),
            node,
            services,
            registry,
            operator,
            token,
            compiles: tokio::sync::Semaphore::new(MAX_COMPILES),
            metrics,
        }
    }

    async fn swap(&self, request: Request<Incoming>, from: SocketAddr) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_owned();
        if let Some(queue) = path
            .strip_prefix("/queues/")
            .and_then(|rest| rest.strip_suffix("/redrive"))
        {
            return match self.operator.redrive(queue.to_owned()).await {
                Ok(redriven) => {
                    tracing::info!(target: "switchyard::audit", action = "redrive", queue, redriven, %from, "dead letters redriven");
                    json(&serde_json::json!({ "queue": queue, "redriven": redriven }))
                }
                Err(error) => {
                    tracing::warn!(target: "switchyard::audit", action = "redrive", queue, %from, %error, "redrive refused");
                    refused(&error)
                }
            };
        }
        if let Some(topic) = path
            .strip_prefix("/topics/")
            .and_then(|rest| rest.strip_suffix("/replay"))
        {
            return self.replay(topic, request.uri().query(), from).await;
        }
        if let Some(service) = path
            .strip_prefix("/state/")
            .and_then(|rest| rest.strip_suffix("/import"))
        {
            return self.import_state(service, request, from).await;
        }
        let (kind, name) = match path.trim_matches('/').split_once('/') {
            Some((kind @ ("services" | "policies"), name)) if !name.is_empty() => {
                (kind, name.to_owned())
            }
            _ => {
                return plain(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no admin endpoint POST {path}; try POST /services/<name>, /policies/<name>, /queues/<name>/redrive, /topics/<name>/replay or /state/<service>/import\n"
                    ),
                );
            }
        };
        let Ok(_compiling) = self.compiles.try_acquire() else {
            return retry_soon(plain(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{MAX_COMPILES} uploads are being compiled already; retry when one is done\n"
                ),
            ));
        };
        let body = http_body_util::Limited::new(request.into_body(), MAX_UPLOAD_BYTES);
        let upload = match http_body_util::BodyExt::collect(body).await {
            Ok(collected) => Upload::new(collected.to_bytes().to_vec()),
            Err(error) => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "could not read the component (at most {MAX_UPLOAD_BYTES} bytes): {error}\n"
                    ),
                );
            }
        };
        let (action, bytes) = (format!("swap {kind}"), upload.bytes.len());
        let sha256 = upload.sha256.clone();
        let outcome = match kind {
            "services" => self
                .operator
                .swap_service(name.clone(), upload)
                .await
                .map(|event| json(&event)),
            _ => self
                .operator
                .swap_policy(name.clone(), upload)
                .await
                .map(|swapped| json(&swapped)),
        };
        match outcome {
            Ok(response) => {
                tracing::info!(target: "switchyard::audit", action, name, sha256, bytes, %from, "swapped");
                response
            }
            Err(error) => {
                tracing::warn!(target: "switchyard::audit", action, name, sha256, bytes, %from, %error, "swap refused");
                refused(&error)
            }
        }
    }
}

impl Admin {
    async fn import_state(
        &self,
        service: &str,
        request: Request<Incoming>,
        from: SocketAddr,
    ) -> Response<Full<Bytes>> {
        let body = http_body_util::Limited::new(request.into_body(), MAX_UPLOAD_BYTES);
        let file = match http_body_util::BodyExt::collect(body).await {
            Ok(collected) => collected.to_bytes(),
            Err(error) => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "could not read the export (at most {MAX_UPLOAD_BYTES} bytes): {error}\n"
                    ),
                );
            }
        };
        let entries = match state::import(service, &file) {
            Ok(entries) => entries,
            Err(why) => return plain(StatusCode::UNPROCESSABLE_ENTITY, format!("{why}\n")),
        };
        match self
            .operator
            .import_state(service.to_owned(), entries)
            .await
        {
            Ok(keys) => {
                tracing::info!(target: "switchyard::audit", action = "import state", service, keys, %from, "state imported");
                json(&serde_json::json!({ "service": service, "imported": keys }))
            }
            Err(error) => {
                tracing::warn!(target: "switchyard::audit", action = "import state", service, %from, %error, "state import refused");
                refused(&error)
            }
        }
    }

    async fn replay(
        &self,
        topic: &str,
        query: Option<&str>,
        from: SocketAddr,
    ) -> Response<Full<Bytes>> {
        let mut subscriber = None;
        let mut start = None;
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*key {
                "subscriber" => subscriber = Some(value.into_owned()),
                "from" => start = Some(value.into_owned()),
                _ => {}
            }
        }
        let usage = "POST /topics/<name>/replay?subscriber=<service>&from=<beginning|latest|offset|RFC 3339 time>";
        let Some(subscriber) = subscriber.filter(|s| !s.is_empty()) else {
            return plain(
                StatusCode::BAD_REQUEST,
                format!("a replay names the subscription: {usage}\n"),
            );
        };
        let Some(start) = start.as_deref().map(StartAt::parse) else {
            return plain(
                StatusCode::BAD_REQUEST,
                format!("a replay says where it starts: {usage}\n"),
            );
        };
        let Some(start) = start else {
            return plain(
                StatusCode::BAD_REQUEST,
                format!("`from` is not a place in a topic: {usage}\n"),
            );
        };
        match self
            .operator
            .replay(topic.to_owned(), subscriber.clone(), start)
            .await
        {
            Ok(offset) => {
                tracing::info!(target: "switchyard::audit", action = "replay", topic, subscriber, %start, offset, %from, "subscription rewound");
                json(
                    &serde_json::json!({ "topic": topic, "subscriber": subscriber, "offset": offset }),
                )
            }
            Err(error) => {
                tracing::warn!(target: "switchyard::audit", action = "replay", topic, subscriber, %from, %error, "replay refused");
                refused(&error)
            }
        }
    }
}

impl Handler for Admin {
    type Body = crate::http::WholeBody;

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let Some(connection) = request.extensions().get::<ConnectionInfo>().cloned() else {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the admin API got a request without its connection\n".into(),
            );
        };
        let open =
            request.method() == Method::GET && matches!(request.uri().path(), "/health" | "/");
        if let Err(denied) = access::check(&self.token, &request, &connection, !open) {
            tracing::warn!(target: "switchyard::audit", action = "denied", method = %request.method(), path = request.uri().path(), from = %connection.peer, reason = %denied, "admin request refused");
            let mut response = plain(denied.status(), format!("{denied}\n"));
            if denied.status() == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer"),
                );
            }
            return response;
        }
        if request.method() == Method::POST {
            return self.swap(request, connection.peer).await;
        }
        if request.method() != Method::GET {
            return plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "the admin API takes GET, and POST for swaps\n".into(),
            );
        }
        match request.uri().path() {
            "/health" => {
                let problems = self.operator.problems();
                if problems.is_empty() {
                    json(&serde_json::json!({ "status": "ok", "node": self.node }))
                } else {
                    let mut response = json(&serde_json::json!({
                        "status": "degraded",
                        "node": self.node,
                        "problems": problems,
                    }));
                    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    response
                }
            }
            "/services" => {
                let table = self.services.table();
                let views: Vec<ServiceView> = table
                    .services
                    .iter()
                    .map(|callee| ServiceView {
                        stats: callee.slot.stats(),
                        routes: callee.spec.routes.iter().map(ToString::to_string).collect(),
                    })
                    .collect();
                json(&views)
            }
            "/metrics" => self.metrics.response().await,
            "/" => live::LivePage::page(),
            "/live" => self.live.response().await,
            "/policies" => json(&self.operator.policies().await),
            "/queues" => json(&self.operator.queues()),
            "/topics" => json(&self.operator.topics()),
            "/state" => match self.operator.state().await {
                Ok(view) => json(&view),
                Err(error) => refused(&error),
            },
            path if path.starts_with("/state/") && path.ends_with("/export") => {
                let service = &path["/state/".len()..path.len() - "/export".len()];
                match self.operator.export_state(service.to_owned()).await {
                    Ok(entries) => match state::export(service, &entries) {
                        Ok(file) => {
                            let mut response = Response::new(Full::new(Bytes::from(file)));
                            response.headers_mut().insert(
                                CONTENT_TYPE,
                                HeaderValue::from_static("application/jsonl"),
                            );
                            response
                        }
                        Err(error) => {
                            plain(StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n"))
                        }
                    },
                    Err(error) => refused(&error),
                }
            }
            "/registry" => json(&serde_json::json!({
                "node": self.node,
                "peers": self.registry.as_ref().map(|registry| registry.view()).unwrap_or_default(),
            })),
            other => plain(
                StatusCode::NOT_FOUND,
                format!(
                    "no admin endpoint {other}; try / (the live page), /health, /services, /registry, /policies, /queues, /topics, /state, /state/<service>/export, /metrics or /live\n"
                ),
            ),
        }
    }
}

/// A refused change, with its reason as the body.
fn refused(error: &ControlError) -> Response<Full<Bytes>> {
    plain(error.status(), format!("{error}\n"))
}

fn json<T: serde::Serialize>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(error) => plain(StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_change_answers_by_what_refused_it() {
        let unknown = ControlError::UnknownService {
            name: "nobody".into(),
            known: "hello".into(),
        };
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
        let no_queue = ControlError::from(QueueError::Unknown {
            name: "nope".into(),
            known: "none".into(),
        });
        assert_eq!(no_queue.status(), StatusCode::NOT_FOUND);
        let no_policy = ControlError::from(PolicyError::Unknown("breaker".into()));
        assert_eq!(no_policy.status(), StatusCode::NOT_FOUND);
        let pool = ControlError::PoolTooSmall {
            needed: 300,
            sized: 200,
        };
        assert_eq!(pool.status(), StatusCode::CONFLICT);
        assert!(pool.to_string().contains("restart the node"), "{pool}");
        let refused = ControlError::from(SwapError::DoesNotInstantiate {
            service: "hello".into(),
            reason: "missing export".into(),
        });
        assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
}
