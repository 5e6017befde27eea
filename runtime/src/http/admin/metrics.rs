//! `GET /metrics`: the node's counters, and its levels read at the moment of the scrape.
//!
//! The admin API serves it behind its token; `[telemetry] metrics_addr` serves the same page
//! on a listener of its own without one, for a scraper that should not hold the admin token.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};

use super::Operator;
use crate::http::ingress::plain;
use crate::http::server::Handler;
use crate::telemetry::{METRICS_CONTENT_TYPE, Metrics, Scrape};
use crate::wasm::{Directory, SwapState};

/// What a scrape reads.
pub(crate) struct MetricsPage {
    metrics: Metrics,
    services: Arc<Directory>,
    registry: Option<Arc<crate::discovery::Registry>>,
    transport: Option<Arc<crate::transport::Transport>>,
    operator: Arc<dyn Operator>,
}

impl MetricsPage {
    pub(crate) fn new(
        metrics: Metrics,
        services: Arc<Directory>,
        registry: Option<Arc<crate::discovery::Registry>>,
        transport: Option<Arc<crate::transport::Transport>>,
        operator: Arc<dyn Operator>,
    ) -> Self {
        Self {
            metrics,
            services,
            registry,
            transport,
            operator,
        }
    }

    /// The page's text, `None` when metrics are off.
    pub(crate) async fn text(&self) -> Option<String> {
        if !self.metrics.is_on() {
            return None;
        }
        let scrape = self.levels().await;
        self.metrics.render(scrape)
    }

    /// The page, or `404` when metrics are off.
    pub(crate) async fn response(&self) -> Response<Full<Bytes>> {
        let Some(text) = self.text().await else {
            return plain(
                StatusCode::NOT_FOUND,
                "metrics are off on this node ([telemetry] metrics = false)\n".into(),
            );
        };
        let mut response = Response::new(Full::new(Bytes::from(text)));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
        response
    }

    /// Everything the node keeps counting anyway, as it is now.
    async fn levels(&self) -> Scrape {
        let mut scrape = Scrape::default();
        self.services_levels(&mut scrape);
        self.policy_levels(&mut scrape).await;
        self.queue_levels(&mut scrape);
        self.topic_levels(&mut scrape);
        if let Some(transport) = &self.transport {
            let stats = transport.stats();
            for (direction, held, streams) in [
                ("out", stats.outgoing_connections, stats.streams_opened),
                ("in", stats.incoming_connections, stats.streams_accepted),
            ] {
                scrape.gauge(
                    "transport_connections",
                    "QUIC connections between this node and its peers, by who opened them",
                    [("direction", direction)],
                    held,
                );
                scrape.counter(
                    "transport_streams",
                    "QUIC streams (one per call, message or raw stream) since the node started",
                    [("direction", direction)],
                    streams,
                );
            }
        }
        if let Some(registry) = &self.registry {
            for (node, state) in registry.peer_states(tokio::time::Instant::now()) {
                scrape.gauge(
                    "mesh_peer_state",
                    "Where a known node stands: live, expired (its record ran out) or departed \
                     (it said goodbye); 1 for its current state",
                    [("node", node.as_str()), ("state", state)],
                    1u8,
                );
            }
            let peers = registry.view();
            scrape.gauge(
                "mesh_peers",
                "Other nodes this node knows as live",
                [],
                peers.len(),
            );
            for peer in &peers {
                scrape.gauge(
                    "mesh_peer_services",
                    "Services a live peer announces",
                    [("node", &peer.node)],
                    peer.services.len(),
                );
            }
        }
        scrape
    }

    fn services_levels(&self, scrape: &mut Scrape) {
        for callee in &self.services.table().services {
            let stats = callee.slot.stats();
            let labels = [("service", stats.name.as_str())];
            scrape.gauge(
                "instances_in_use",
                "Instances of a service running a request now",
                labels,
                stats.in_flight,
            );
            scrape.gauge(
                "instances_max",
                "Instances of a service allowed at once (max_instances)",
                labels,
                stats.max_instances,
            );
            scrape.gauge(
                "generation",
                "A service's or policy binding's generation: 1 at start, +1 per swap",
                [("kind", "service"), ("name", stats.name.as_str())],
                stats.generation,
            );
            scrape.counter(
                "swaps",
                "Swaps to a new version since the node started",
                [("kind", "service"), ("name", stats.name.as_str())],
                stats.swaps,
            );
            scrape.counter(
                "rollbacks",
                "Swaps rolled back after failing their probation",
                [("kind", "service"), ("name", stats.name.as_str())],
                stats.rollbacks,
            );
            scrape.counter(
                "service_failures",
                "Requests and calls a service's guest did not answer (trap, timeout, memory)",
                labels,
                stats.errors,
            );
            scrape.counter(
                "service_busy",
                "Requests and calls refused at max_instances",
                labels,
                stats.rejected,
            );
        }
    }

    async fn policy_levels(&self, scrape: &mut Scrape) {
        for binding in self.operator.policies().await {
            let labels = [
                ("policy", binding.policy.as_str()),
                ("scope", binding.scope.as_str()),
            ];
            scrape.gauge(
                "policy_generation",
                "A policy binding's generation: 1 at start, +1 per swap",
                labels,
                binding.generation,
            );
            let rolled_back = binding
                .last_swap
                .as_ref()
                .is_some_and(|swap| swap.state == SwapState::RolledBack);
            scrape.gauge(
                "policy_rolled_back",
                "1 when a binding's last swap was rolled back",
                labels,
                u8::from(rolled_back),
            );
            if let Some(state) = &binding.state {
                scrape.gauge(
                    "policy_state",
                    "The state a policy binding reports (1 for the current one)",
                    [
                        ("policy", binding.policy.as_str()),
                        ("scope", binding.scope.as_str()),
                        ("state", state.as_str()),
                    ],
                    1u8,
                );
            }
        }
    }

    fn queue_levels(&self, scrape: &mut Scrape) {
        for queue in self.operator.queues() {
            let labels = [("queue", queue.name.as_str())];
            scrape.gauge(
                "queue_depth",
                "Messages a queue owes: waiting, paused before a redelivery, or being delivered",
                labels,
                queue.depth,
            );
            scrape.gauge(
                "queue_in_flight",
                "A queue's messages being delivered now",
                labels,
                queue.in_flight,
            );
            scrape.counter("queue_sent", "Messages sent to a queue", labels, queue.sent);
            scrape.counter(
                "queue_delivered",
                "Messages of a queue its subscriber acknowledged",
                labels,
                queue.delivered,
            );
            scrape.counter(
                "queue_redelivered",
                "Redeliveries of a queue's messages",
                labels,
                queue.redelivered,
            );
            scrape.counter(
                "queue_dead_lettered",
                "A queue's messages given up on",
                labels,
                queue.dead_lettered,
            );
            scrape.counter(
                "queue_loops_stopped",
                "A queue's messages dead-lettered by the loop guard (max_causation_depth)",
                labels,
                queue.loops_stopped,
            );
            scrape.gauge(
                "queue_dead_letters",
                "Dead letters a queue keeps",
                labels,
                queue.dead_letters_total,
            );
        }
    }

    fn topic_levels(&self, scrape: &mut Scrape) {
        for topic in self.operator.topics() {
            let labels = [("topic", topic.name.as_str())];
            scrape.gauge(
                "topic_messages",
                "Messages a topic keeps",
                labels,
                topic.messages,
            );
            scrape.gauge("topic_bytes", "Bytes a topic keeps", labels, topic.bytes);
            scrape.gauge(
                "topic_next_offset",
                "The offset a topic's next message gets",
                labels,
                topic.next_offset,
            );
            scrape.counter(
                "topic_published",
                "Messages published to a topic",
                labels,
                topic.published,
            );
            for subscription in &topic.subscriptions {
                let labels = [
                    ("topic", topic.name.as_str()),
                    ("subscriber", subscription.service.as_str()),
                ];
                scrape.gauge(
                    "subscription_lag",
                    "Messages a subscription owes",
                    labels,
                    subscription.lag,
                );
                scrape.gauge(
                    "subscription_in_flight",
                    "A subscription's messages being delivered now",
                    labels,
                    subscription.in_flight,
                );
                scrape.counter(
                    "subscription_delivered",
                    "Messages a subscriber acknowledged",
                    labels,
                    subscription.delivered,
                );
                scrape.counter(
                    "subscription_redelivered",
                    "Redeliveries to a subscriber",
                    labels,
                    subscription.redelivered,
                );
                scrape.counter(
                    "subscription_dead_lettered",
                    "Messages a subscription gave up on",
                    labels,
                    subscription.dead_lettered,
                );
                scrape.counter(
                    "subscription_loops_stopped",
                    "A subscription's messages dead-lettered by the loop guard",
                    labels,
                    subscription.loops_stopped,
                );
                scrape.counter(
                    "subscription_expired",
                    "Messages retention dropped before a subscription was done with them",
                    labels,
                    subscription.expired,
                );
            }
        }
    }
}

impl Handler for MetricsPage {
    /// The listener of `[telemetry] metrics_addr`: `GET /metrics` and nothing else.
    type Body = crate::http::WholeBody;

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() == Method::GET && request.uri().path() == "/metrics" {
            return self.response().await;
        }
        plain(
            StatusCode::NOT_FOUND,
            format!(
                "this listener serves only GET /metrics, not {} {}\n",
                request.method(),
                request.uri().path()
            ),
        )
    }
}
