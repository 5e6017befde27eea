//! The admin API: what an operator asks of a running node, as JSON (JSON lives only here).
//!
//! Reads (`/health`, `/services`, `/registry`, `/policies`, `/queues`) and changes (a
//! component upload swaps a service or a policy; a redrive resends a queue's dead letters).
//! Changes go through the [`Operator`] the node implements, so this file knows HTTP and JSON,
//! not how a swap is done.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};

use super::ingress::plain;
use super::server::Handler;
use crate::wasm::Directory;

/// The largest component a swap accepts.
const MAX_UPLOAD_BYTES: usize = 256 * 1024 * 1024;

/// What the admin API changes on a running node (implemented by the node).
pub(crate) trait Operator: Send + Sync {
    /// `GET /policies`.
    fn policies(&self) -> crate::util::BoxFuture<'_, serde_json::Value>;
    /// `GET /queues`.
    fn queues(&self) -> serde_json::Value;
    /// `POST /queues/<name>/redrive`: sends the queue's dead letters again.
    fn redrive(
        &self,
        queue: String,
    ) -> crate::util::BoxFuture<'_, Result<serde_json::Value, String>>;
    /// `POST /policies/<name>` with a component: swaps every binding of that policy.
    fn swap_policy(
        &self,
        name: String,
        component: Vec<u8>,
    ) -> crate::util::BoxFuture<'_, Result<serde_json::Value, String>>;
    /// `POST /services/<name>` with a component: a new generation of that service.
    fn swap_service(
        &self,
        name: String,
        component: Vec<u8>,
    ) -> crate::util::BoxFuture<'_, Result<serde_json::Value, String>>;
}

/// The admin API: `GET /health`, `/services`, `/registry`, `/policies`, `/queues`; `POST
/// /services/<name>` and `/policies/<name>` (hot swap, the body is the new component) and
/// `/queues/<name>/redrive` (send its dead letters again).
pub(crate) struct Admin {
    node: String,
    services: Arc<Directory>,
    registry: Option<Arc<crate::discovery::Registry>>,
    operator: Arc<dyn Operator>,
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
    ) -> Self {
        Self {
            node,
            services,
            registry,
            operator,
        }
    }

    async fn swap(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_owned();
        if let Some(queue) = path
            .strip_prefix("/queues/")
            .and_then(|rest| rest.strip_suffix("/redrive"))
        {
            return match self.operator.redrive(queue.to_owned()).await {
                Ok(report) => json(&report),
                Err(reason) => plain(StatusCode::UNPROCESSABLE_ENTITY, format!("{reason}\n")),
            };
        }
        let (kind, name) = match path.trim_matches('/').split_once('/') {
            Some((kind @ ("services" | "policies"), name)) if !name.is_empty() => {
                (kind, name.to_owned())
            }
            _ => {
                return plain(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no admin endpoint POST {path}; try POST /services/<name>, /policies/<name> or /queues/<name>/redrive\n"
                    ),
                );
            }
        };
        let body = http_body_util::Limited::new(request.into_body(), MAX_UPLOAD_BYTES);
        let component = match http_body_util::BodyExt::collect(body).await {
            Ok(collected) => collected.to_bytes().to_vec(),
            Err(error) => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "could not read the component (at most {MAX_UPLOAD_BYTES} bytes): {error}\n"
                    ),
                );
            }
        };
        let outcome = match kind {
            "services" => self.operator.swap_service(name, component).await,
            _ => self.operator.swap_policy(name, component).await,
        };
        match outcome {
            Ok(report) => json(&report),
            Err(reason) => {
                let mut response = plain(StatusCode::UNPROCESSABLE_ENTITY, format!("{reason}\n"));
                *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
                response
            }
        }
    }
}

impl Handler for Admin {
    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() == Method::POST {
            return self.swap(request).await;
        }
        if request.method() != Method::GET {
            return plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "the admin API takes GET, and POST for swaps\n".into(),
            );
        }
        match request.uri().path() {
            "/health" => json(&serde_json::json!({ "status": "ok", "node": self.node })),
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
            "/policies" => json(&self.operator.policies().await),
            "/queues" => json(&self.operator.queues()),
            "/registry" => json(&serde_json::json!({
                "node": self.node,
                "peers": self.registry.as_ref().map(|registry| registry.view()).unwrap_or_default(),
            })),
            other => plain(
                StatusCode::NOT_FOUND,
                format!(
                    "no admin endpoint {other}; try /health, /services, /registry, /policies or /queues\n"
                ),
            ),
        }
    }
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
