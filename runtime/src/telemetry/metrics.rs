//! The node's metrics, in Prometheus's text format (`GET /metrics`).
//!
//! A node makes one [`Metrics`] at start and hands a clone to what counts traffic as it
//! passes: the ingress (requests by service, route and status class, and their latency), the
//! rpc client (calls by caller, callee and outcome, and their latency), the policy chains
//! (decisions that changed a call's course) and the policy bindings (the states a policy
//! reports, such as a breaker's `open`). What the node keeps counting anyway (queue depth and
//! lag, redeliveries, instances in use, swaps, peers) is not counted twice: whoever scrapes
//! reads those at that moment into a [`Scrape`], which [`Metrics::render`] writes beside the
//! counters.
//!
//! Label values stay bounded: names and route templates from the manifest, states a policy
//! reports (checked, and few per binding), kinds from fixed lists; never a raw path, an id or
//! an error's text. [`Metrics::off`] counts nothing and costs a branch per event.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of what [`Metrics::render`] writes.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Latency buckets, in seconds: from a local call (well under a millisecond) to a request
/// that ran into a long timeout.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Where the node counts. Cheap to clone (one `Arc`).
#[derive(Clone, Default)]
pub(crate) struct Metrics {
    families: Option<Arc<Families>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("on", &self.families.is_some())
            .finish()
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

struct Families {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: HistogramFamily<RouteLabels>,
    calls: Family<CallLabels, Counter>,
    call_seconds: HistogramFamily<PairLabels>,
    decisions: Family<DecisionLabels, Counter>,
    transitions: Family<StateLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    service: String,
    /// One of HTTP's methods, or `other`: a route for `*` takes any token a client sends.
    method: &'static str,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: String,
    method: &'static str,
    route: String,
    /// `2xx`, `4xx`, ...
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PairLabels {
    caller: String,
    callee: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    caller: String,
    callee: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    policy: String,
    scope: String,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    policy: String,
    scope: String,
    state: String,
}

/// How a call ended, as the calls counter labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallOutcome {
    /// The callee answered (with any status).
    Ok,
    Timeout,
    Unavailable,
    /// A policy refused it.
    Rejected,
    /// The callee failed without answering.
    Remote,
    BadRequest,
}

impl CallOutcome {
    /// As metrics and request logs write it.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::Rejected => "rejected",
            Self::Remote => "remote",
            Self::BadRequest => "bad_request",
        }
    }
}

/// A policy's decision that changed a call's course (`proceed` and `done` are not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PolicyDecision {
    /// `before-call` refused the call.
    Reject,
    /// `before-call` answered in the callee's place.
    Respond,
    /// `before-call` asked for a hedged second attempt.
    Hedge,
    /// `after-call` asked for a retry (counted when the deadline allowed it).
    Retry,
    /// `after-call` replaced the outcome with its own answer.
    Fallback,
}

impl PolicyDecision {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Reject => "reject",
            Self::Respond => "respond",
            Self::Hedge => "hedge",
            Self::Retry => "retry",
            Self::Fallback => "fallback",
        }
    }
}

/// `method` as a label: the methods HTTP defines keep their names, anything else is `other`.
fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN
        .into_iter()
        .find(|known| *known == method)
        .unwrap_or("other")
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl Metrics {
    /// Metrics that count.
    pub(crate) fn new() -> Self {
        let requests = Family::default();
        let request_seconds = HistogramFamily::new_with_constructor(latency_histogram as fn() -> _);
        let calls = Family::default();
        let call_seconds = HistogramFamily::new_with_constructor(latency_histogram as fn() -> _);
        let decisions = Family::default();
        let transitions = Family::default();
        let mut registry = Registry::with_prefix("switchyard");
        registry.register(
            "requests",
            "HTTP requests the ingress answered, by service, route template and status class",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its answer, by service and route template",
            request_seconds.clone(),
        );
        registry.register(
            "calls",
            "Calls between services made from this node, by caller, callee and outcome",
            calls.clone(),
        );
        registry.register(
            "call_duration_seconds",
            "Time a call took, policies and retries included, by caller and callee",
            call_seconds.clone(),
        );
        registry.register(
            "policy_decisions",
            "Decisions of resilience policies that changed a call's course",
            decisions.clone(),
        );
        registry.register(
            "policy_transitions",
            "Times a policy binding entered a state it reports (a breaker's open, half-open, \
             closed)",
            transitions.clone(),
        );
        Self {
            families: Some(Arc::new(Families {
                registry,
                requests,
                request_seconds,
                calls,
                call_seconds,
                decisions,
                transitions,
            })),
        }
    }

    /// Metrics that count nothing (`[telemetry] metrics = false`).
    pub(crate) fn off() -> Self {
        Self::default()
    }

    pub(crate) fn is_on(&self) -> bool {
        self.families.is_some()
    }

    /// A request the ingress routed to `service` by one of its routes (`method` and the path
    /// template) and answered with `status`.
    pub(crate) fn request(
        &self,
        service: &str,
        method: &str,
        route: &str,
        status: u16,
        took: Duration,
    ) {
        let Some(families) = &self.families else {
            return;
        };
        let route = RouteLabels {
            service: service.to_owned(),
            method: method_label(method),
            route: route.to_owned(),
        };
        families
            .request_seconds
            .get_or_create(&route)
            .observe(took.as_secs_f64());
        families
            .requests
            .get_or_create(&RequestLabels {
                service: route.service,
                method: route.method,
                route: route.route,
                class: status_class(status),
            })
            .inc();
    }

    /// A call from `caller` to `callee` that ended with `outcome` after `took`.
    pub(crate) fn call(&self, caller: &str, callee: &str, outcome: CallOutcome, took: Duration) {
        let Some(families) = &self.families else {
            return;
        };
        let pair = PairLabels {
            caller: caller.to_owned(),
            callee: callee.to_owned(),
        };
        families
            .call_seconds
            .get_or_create(&pair)
            .observe(took.as_secs_f64());
        families
            .calls
            .get_or_create(&CallLabels {
                caller: pair.caller,
                callee: pair.callee,
                outcome: outcome.label(),
            })
            .inc();
    }

    /// `policy`, bound at `scope`, made `decision`.
    pub(crate) fn policy_decision(&self, policy: &str, scope: &str, decision: PolicyDecision) {
        let Some(families) = &self.families else {
            return;
        };
        families
            .decisions
            .get_or_create(&DecisionLabels {
                policy: policy.to_owned(),
                scope: scope.to_owned(),
                decision: decision.label(),
            })
            .inc();
    }

    /// `policy`, bound at `scope`, entered `state` (one it reported; the caller bounds them).
    pub(crate) fn policy_transition(&self, policy: &str, scope: &str, state: &str) {
        let Some(families) = &self.families else {
            return;
        };
        families
            .transitions
            .get_or_create(&StateLabels {
                policy: policy.to_owned(),
                scope: scope.to_owned(),
                state: state.to_owned(),
            })
            .inc();
    }

    /// This node's call totals by pair, for a peer drawing the mesh's call graph; none when
    /// metrics are off.
    pub(crate) fn call_traffic(&self) -> Vec<super::CallTraffic> {
        self.render(Scrape::default())
            .map_or_else(Vec::new, |text| {
                super::live::call_traffic(&super::live::parse(&text))
            })
    }

    /// Every counter, and the levels in `scrape`, in Prometheus's text format; `None` when
    /// metrics are off.
    pub(crate) fn render(&self, scrape: Scrape) -> Option<String> {
        let families = self.families.as_ref()?;
        let mut text = String::new();
        let mut levels = Registry::default();
        levels.register_collector(Box::new(scrape));
        let written =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &families.registry)
                .and_then(|()| {
                    prometheus_client::encoding::prometheus_text::encode(&mut text, &levels)
                });
        if let Err(error) = written {
            // Writing into a String fails only if a metric's encoder does; say so in the text.
            let _ = writeln!(text, "# the node failed to write its metrics: {error}");
        }
        Some(text)
    }
}

/// Levels and running totals read at the moment of a scrape, each metric with its samples.
#[derive(Debug, Default)]
pub(crate) struct Scrape {
    families: Vec<ScrapeFamily>,
}

#[derive(Debug)]
struct ScrapeFamily {
    name: &'static str,
    help: &'static str,
    counter: bool,
    samples: Vec<(Vec<(&'static str, String)>, i64)>,
}

impl Scrape {
    /// Sets the gauge `switchyard_<name>{labels}` to `value`.
    pub(crate) fn gauge<const N: usize>(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: [(&'static str, &str); N],
        value: impl TryInto<i64>,
    ) {
        self.sample(name, help, false, &labels, value);
    }

    /// Sets the counter `switchyard_<name>_total{labels}` to `value`, a total the node keeps
    /// since it started.
    pub(crate) fn counter<const N: usize>(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: [(&'static str, &str); N],
        value: impl TryInto<i64>,
    ) {
        self.sample(name, help, true, &labels, value);
    }

    fn sample(
        &mut self,
        name: &'static str,
        help: &'static str,
        counter: bool,
        labels: &[(&'static str, &str)],
        value: impl TryInto<i64>,
    ) {
        let value = value.try_into().unwrap_or(i64::MAX);
        let labels = labels
            .iter()
            .map(|(key, value)| (*key, (*value).to_owned()))
            .collect();
        match self.families.iter_mut().find(|family| family.name == name) {
            Some(family) => family.samples.push((labels, value)),
            None => self.families.push(ScrapeFamily {
                name,
                help,
                counter,
                samples: vec![(labels, value)],
            }),
        }
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::TypedMetric as _;
        for family in &self.families {
            let name = format!("switchyard_{}", family.name);
            let kind = if family.counter {
                ConstCounter::<u64>::TYPE
            } else {
                ConstGauge::<i64>::TYPE
            };
            let mut metric = encoder.encode_descriptor(&name, family.help, None, kind)?;
            for (labels, value) in &family.samples {
                let sample = metric.encode_family(labels)?;
                if family.counter {
                    ConstCounter::new(u64::try_from(*value).unwrap_or(0)).encode(sample)?;
                } else {
                    ConstGauge::new(*value).encode(sample)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, starts: &str) -> Option<&'a str> {
        text.lines().find(|line| line.starts_with(starts))
    }

    #[test]
    fn counts_render_in_the_prometheus_text_format() {
        let metrics = Metrics::new();
        metrics.request(
            "hello",
            "GET",
            "/hello/{name}",
            200,
            Duration::from_millis(3),
        );
        metrics.request(
            "hello",
            "GET",
            "/hello/{name}",
            204,
            Duration::from_millis(1),
        );
        metrics.request(
            "hello",
            "GET",
            "/hello/{name}",
            503,
            Duration::from_millis(1),
        );
        // A route for `*` takes any method token a client makes up: one `other` series.
        for made_up in ["BREW", "WHEN"] {
            metrics.request("hello", made_up, "/any", 200, Duration::from_millis(1));
        }
        metrics.call(
            "shop",
            "inventory",
            CallOutcome::Timeout,
            Duration::from_secs(2),
        );
        metrics.policy_decision("breaker", "calls to inventory", PolicyDecision::Reject);
        metrics.policy_transition("breaker", "calls to inventory", "open");
        let mut scrape = Scrape::default();
        scrape.gauge("queue_depth", "Messages owed", [("queue", "orders")], 7u64);
        scrape.gauge("queue_depth", "Messages owed", [("queue", "mail")], 0u64);
        scrape.counter(
            "queue_redelivered",
            "Redeliveries",
            [("queue", "orders")],
            3u64,
        );
        let text = metrics.render(scrape).unwrap_or_default();
        assert_eq!(
            line(
                &text,
                "switchyard_requests_total{service=\"hello\",method=\"other\",route=\"/any\",class=\"2xx\"}"
            ),
            Some(
                "switchyard_requests_total{service=\"hello\",method=\"other\",route=\"/any\",class=\"2xx\"} 2"
            ),
            "{text}"
        );
        assert!(!text.contains("BREW"), "{text}");
        assert_eq!(
            line(
                &text,
                "switchyard_requests_total{service=\"hello\",method=\"GET\",route=\"/hello/{name}\",class=\"2xx\"}"
            ),
            Some(
                "switchyard_requests_total{service=\"hello\",method=\"GET\",route=\"/hello/{name}\",class=\"2xx\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("class=\"5xx\"} 1"), "{text}");
        assert!(
            text.contains("switchyard_request_duration_seconds_bucket{le=\"0.005\",service=\"hello\",method=\"GET\",route=\"/hello/{name}\"} 3")
                || text.contains("switchyard_request_duration_seconds_bucket{service=\"hello\",method=\"GET\",route=\"/hello/{name}\",le=\"0.005\"} 3"),
            "{text}"
        );
        assert!(
            text.contains(
                "switchyard_calls_total{caller=\"shop\",callee=\"inventory\",outcome=\"timeout\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("decision=\"reject\"} 1"), "{text}");
        assert!(text.contains("state=\"open\"} 1"), "{text}");
        assert!(
            text.contains("# TYPE switchyard_queue_depth gauge"),
            "{text}"
        );
        assert_eq!(
            text.matches("# TYPE switchyard_queue_depth").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("switchyard_queue_depth{queue=\"orders\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_queue_depth{queue=\"mail\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_queue_redelivered_total{queue=\"orders\"} 3"),
            "{text}"
        );
    }

    #[test]
    fn metrics_off_count_nothing_and_render_nothing() {
        let metrics = Metrics::off();
        metrics.request("hello", "GET", "/", 200, Duration::from_millis(1));
        assert!(!metrics.is_on());
        assert_eq!(metrics.render(Scrape::default()), None);
    }

    #[test]
    fn label_values_are_escaped() {
        let metrics = Metrics::new();
        let mut scrape = Scrape::default();
        scrape.gauge("x", "x", [("queue", "a\"b\\c\nd")], 1u64);
        let text = metrics.render(scrape).unwrap_or_default();
        assert!(
            text.contains("switchyard_x{queue=\"a\\\"b\\\\c\\nd\"} 1"),
            "{text}"
        );
    }
}
