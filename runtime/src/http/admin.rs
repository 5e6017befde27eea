use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};

use super::ingress::plain;
use super::server::Handler;
use crate::wasm::Slot;

/// The admin API: `GET /health`, `GET /services`, `GET /registry`.
pub(crate) struct Admin {
    node: String,
    services: Vec<(Arc<Slot>, Vec<String>)>,
    registry: Option<Arc<crate::discovery::Registry>>,
}

#[derive(serde::Serialize)]
struct ServiceView<'a> {
    #[serde(flatten)]
    stats: crate::wasm::SlotStats,
    routes: &'a [String],
}

impl Admin {
    /// `services`: each slot with its routes as written (`GET /hello/{name}`).
    pub(crate) fn new(
        node: String,
        services: Vec<(Arc<Slot>, Vec<String>)>,
        registry: Option<Arc<crate::discovery::Registry>>,
    ) -> Self {
        Self {
            node,
            services,
            registry,
        }
    }
}

impl Handler for Admin {
    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET {
            return plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "the admin API takes GET\n".into(),
            );
        }
        match request.uri().path() {
            "/health" => json(&serde_json::json!({ "status": "ok", "node": self.node })),
            "/services" => {
                let views: Vec<ServiceView<'_>> = self
                    .services
                    .iter()
                    .map(|(slot, routes)| ServiceView {
                        stats: slot.stats(),
                        routes,
                    })
                    .collect();
                json(&views)
            }
            "/registry" => json(&serde_json::json!({
                "node": self.node,
                "peers": self.registry.as_ref().map(|registry| registry.view()).unwrap_or_default(),
            })),
            other => plain(
                StatusCode::NOT_FOUND,
                format!("no admin endpoint {other}; try /health, /services or /registry\n"),
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
