//! The live page: `GET /` is a self-contained HTML page (no external assets) that polls
//! `GET /live` once a second with the admin token and draws it; `switchyard top` reads the
//! same `/live`.
//!
//! The page itself holds no data, so it is served without the token; it takes the token from
//! the address's fragment (`http://admin/#token=...`, never sent to the server) or asks for
//! it, and keeps it for the tab only. `/live` is behind the token like every other endpoint.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http_body_util::Full;
use hyper::Response;
use serde::Serialize;

use super::MetricsPage;
use crate::discovery::Registry;
use crate::http::ingress::plain;
use crate::telemetry::{
    CallTraffic, LiveTraffic, LiveWindow, MAX_CALL_PAIRS, Sample, parse_metrics,
};
use crate::transport::Transport;
use crate::wasm::{Directory, SwapEvent};
use crate::wire::frame::Frame;

/// How long a look waits for peers' call totals; a peer slower than that shows its last.
const PEER_BUDGET: Duration = Duration::from_millis(500);

const PAGE: &str = include_str!("live.html");

/// What `/live` reads, and the window its rates are taken over.
pub(crate) struct LivePage {
    node: String,
    metrics: Arc<MetricsPage>,
    services: Arc<Directory>,
    window: Mutex<LiveWindow>,
    /// The peers to ask for their calls (none on a node without a mesh).
    mesh: Option<(Arc<Registry>, Arc<Transport>)>,
    /// What each live peer answered last: one that misses a look keeps its last totals
    /// rather than dropping out of the graph for a beat.
    peer_calls: Mutex<BTreeMap<String, Vec<CallTraffic>>>,
}

/// `GET /live`.
#[derive(Serialize)]
struct LiveView {
    node: String,
    #[serde(flatten)]
    traffic: LiveTraffic,
    instances: Vec<Instances>,
    policies: Vec<PolicyState>,
    queues: Vec<QueueLevel>,
    subscriptions: Vec<SubscriptionLevel>,
    peers: u64,
    swaps: Vec<LastSwap>,
}

#[derive(Serialize)]
struct Instances {
    service: String,
    in_use: u64,
    max: u64,
    generation: u64,
    swaps: u64,
    rollbacks: u64,
}

#[derive(Serialize)]
struct PolicyState {
    policy: String,
    scope: String,
    state: String,
}

#[derive(Serialize)]
struct QueueLevel {
    queue: String,
    depth: u64,
    in_flight: u64,
    dead_lettered: u64,
}

#[derive(Serialize)]
struct SubscriptionLevel {
    topic: String,
    subscriber: String,
    lag: u64,
}

#[derive(Serialize)]
struct LastSwap {
    service: String,
    #[serde(flatten)]
    swap: SwapEvent,
}

impl LivePage {
    pub(crate) fn new(
        node: String,
        metrics: Arc<MetricsPage>,
        services: Arc<Directory>,
        mesh: Option<(Arc<Registry>, Arc<Transport>)>,
    ) -> Self {
        Self {
            window: Mutex::new(LiveWindow::starting(&node, std::time::Instant::now())),
            node,
            metrics,
            services,
            mesh,
            peer_calls: Mutex::new(BTreeMap::new()),
        }
    }

    /// Every live peer's call totals: asked at once, each within [`PEER_BUDGET`].
    async fn peer_calls(&self) -> Vec<(String, Vec<CallTraffic>)> {
        let Some((registry, transport)) = &self.mesh else {
            return Vec::new();
        };
        let members: Vec<_> = registry
            .members()
            .into_iter()
            .filter(|member| member.node != self.node)
            .collect();
        let mut asks = tokio::task::JoinSet::new();
        for member in &members {
            let (transport, node, address) =
                (transport.clone(), member.node.clone(), member.address);
            asks.spawn(async move {
                let answer = transport
                    .request(address, &Frame::AskTraffic, PEER_BUDGET)
                    .await;
                (node, answer)
            });
        }
        let mut answers = Vec::new();
        while let Some(joined) = asks.join_next().await {
            match joined {
                Ok((node, Ok(Frame::Traffic { calls }))) if calls.len() <= MAX_CALL_PAIRS => {
                    answers.push((node, calls));
                }
                Ok((node, Ok(other))) => tracing::debug!(
                    peer = %node,
                    answer = other.kind(),
                    "peer did not tell its calls (a node of an older version, or too many pairs)"
                ),
                Ok((node, Err(error))) => {
                    tracing::debug!(peer = %node, %error, "peer did not tell its calls");
                }
                Err(error) => tracing::debug!(%error, "asking a peer for its calls failed"),
            }
        }
        let mut known = match self.peer_calls.lock() {
            Ok(known) => known,
            Err(poisoned) => poisoned.into_inner(),
        };
        known.retain(|node, _| members.iter().any(|member| &member.node == node));
        known.extend(answers);
        known
            .iter()
            .map(|(node, calls)| (node.clone(), calls.clone()))
            .collect()
    }

    /// The page.
    pub(crate) fn page() -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // Its script and style are inline; nothing else loads, nothing frames it.
        headers.insert(
            http::header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; frame-ancestors 'none'",
            ),
        );
        response
    }

    /// `/live`: traffic over the window and the levels of now; `404` with metrics off.
    pub(crate) async fn response(&self) -> Response<Full<Bytes>> {
        let Some(text) = self.metrics.text().await else {
            return plain(
                StatusCode::NOT_FOUND,
                "metrics are off on this node ([telemetry] metrics = false): the live view \
                 reads them\n"
                    .into(),
            );
        };
        let samples = parse_metrics(&text);
        let peers = self.peer_calls().await;
        let traffic = match self.window.lock() {
            Ok(mut window) => window.look(std::time::Instant::now(), &samples, &peers),
            Err(poisoned) => {
                poisoned
                    .into_inner()
                    .look(std::time::Instant::now(), &samples, &peers)
            }
        };
        let view = LiveView {
            node: self.node.clone(),
            traffic,
            instances: instances(&samples),
            policies: samples
                .iter()
                .filter(|s| s.name == "switchyard_policy_state" && s.value > 0.0)
                .map(|s| PolicyState {
                    policy: s.label("policy").to_owned(),
                    scope: s.label("scope").to_owned(),
                    state: s.label("state").to_owned(),
                })
                .collect(),
            queues: samples
                .iter()
                .filter(|s| s.name == "switchyard_queue_depth")
                .map(|s| {
                    let queue = s.label("queue");
                    QueueLevel {
                        queue: queue.to_owned(),
                        depth: s.value as u64,
                        in_flight: level(&samples, "switchyard_queue_in_flight", "queue", queue),
                        dead_lettered: level(
                            &samples,
                            "switchyard_queue_dead_lettered_total",
                            "queue",
                            queue,
                        ),
                    }
                })
                .collect(),
            subscriptions: samples
                .iter()
                .filter(|s| s.name == "switchyard_subscription_lag")
                .map(|s| SubscriptionLevel {
                    topic: s.label("topic").to_owned(),
                    subscriber: s.label("subscriber").to_owned(),
                    lag: s.value as u64,
                })
                .collect(),
            peers: samples
                .iter()
                .find(|s| s.name == "switchyard_mesh_peers")
                .map_or(0, |s| s.value as u64),
            swaps: self
                .services
                .table()
                .services
                .iter()
                .filter_map(|callee| {
                    let stats = callee.slot.stats();
                    Some(LastSwap {
                        service: stats.name,
                        swap: stats.last_swap?,
                    })
                })
                .collect(),
        };
        let mut response = super::json(&view);
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

fn instances(samples: &[Sample]) -> Vec<Instances> {
    samples
        .iter()
        .filter(|s| s.name == "switchyard_instances_in_use")
        .map(|s| {
            let service = s.label("service");
            let of = |name: &str| {
                samples
                    .iter()
                    .find(|s| {
                        s.name == name && s.label("kind") == "service" && s.label("name") == service
                    })
                    .map_or(0, |s| s.value as u64)
            };
            Instances {
                service: service.to_owned(),
                in_use: s.value as u64,
                max: level(samples, "switchyard_instances_max", "service", service),
                generation: of("switchyard_generation"),
                swaps: of("switchyard_swaps_total"),
                rollbacks: of("switchyard_rollbacks_total"),
            }
        })
        .collect()
}

/// The value of `name{key="value"}`, 0 when absent.
fn level(samples: &[Sample], name: &str, key: &str, value: &str) -> u64 {
    samples
        .iter()
        .find(|s| s.name == name && s.label(key) == value)
        .map_or(0, |s| s.value as u64)
}
