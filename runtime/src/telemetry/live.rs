//! The live view: what the node's metrics say about the last few seconds.
//!
//! The live page (admin `/`) and `switchyard top` show rates, latency quantiles and error
//! rates *now*, while the metrics are totals since the node started. [`LiveWindow`] keeps the
//! totals of earlier looks and answers the difference to the oldest one within
//! [`WINDOW`] (or the oldest it has): the same arithmetic as Prometheus's `rate` and
//! `histogram_quantile`, done by the node so that a page needs no Prometheus. It reads the
//! node's own Prometheus text ([`parse`]), the one place metrics are written, rather than
//! counting anything twice; it decides by the `now` it is given.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How far back rates look, at least (when the node has looked that far back).
pub(crate) const WINDOW: Duration = Duration::from_secs(10);

/// One line of Prometheus text: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) value: f64,
}

impl Sample {
    /// The value of label `key`, empty when the sample has none.
    pub(crate) fn label(&self, key: &str) -> &str {
        self.labels.get(key).map_or("", String::as_str)
    }
}

/// The samples of Prometheus text format 0.0.4; comments and lines that do not parse are
/// skipped (the text is the node's own).
pub(crate) fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        loop {
            let (start, first) = chars.next()?;
            if first == '}' {
                rest = &inner[start + 1..];
                break;
            }
            if first == ',' {
                continue;
            }
            let eq = inner[start..].find('=')? + start;
            let key = inner[start..eq].to_owned();
            while chars.next()?.0 < eq + 1 {}
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    other => value.push(other),
                }
            }
            labels.insert(key, value);
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Totals of one service's requests, summed over its routes and methods.
#[derive(Debug, Clone, Default, PartialEq)]
struct Counted {
    count: f64,
    errors: f64,
    /// Cumulative histogram buckets: upper bound (seconds) → observations at or below.
    buckets: BTreeMap<OrderedBound, f64>,
}

/// A bucket's upper bound, ordered (bounds are never NaN).
#[derive(Debug, Clone, Copy, PartialEq)]
struct OrderedBound(f64);

impl Eq for OrderedBound {}

impl PartialOrd for OrderedBound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrderedBound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// What the window remembers of one look: traffic totals by service (this node's) and by
/// call pair on each node whose calls it knows.
#[derive(Debug, Clone, Default, PartialEq)]
struct Totals {
    services: BTreeMap<String, Counted>,
    /// `(node, caller, callee)`: each node counts the calls its own services make.
    calls: BTreeMap<(String, String, String), Counted>,
    /// The nodes this look heard from (this node included).
    nodes: BTreeSet<String>,
}

impl Counted {
    /// Adds a counter sample; `failed` ones count as errors too.
    fn add(&mut self, sample: &Sample, failed: bool) {
        self.count += sample.value;
        if failed {
            self.errors += sample.value;
        }
    }

    /// Adds a histogram bucket sample (`le` its upper bound).
    fn add_bucket(&mut self, sample: &Sample) {
        if let Ok(bound) = sample.label("le").parse::<f64>() {
            *self.buckets.entry(OrderedBound(bound)).or_default() += sample.value;
        }
    }
}

/// Requests by service and calls by pair in one node's `samples`.
fn counted(
    samples: &[Sample],
) -> (
    BTreeMap<String, Counted>,
    BTreeMap<(String, String), Counted>,
) {
    let mut services: BTreeMap<String, Counted> = BTreeMap::new();
    let mut calls: BTreeMap<(String, String), Counted> = BTreeMap::new();
    for sample in samples {
        let service = || sample.label("service").to_owned();
        let pair = || {
            let key = |label| sample.label(label).to_owned();
            (key("caller"), key("callee"))
        };
        match sample.name.as_str() {
            "switchyard_requests_total" => services
                .entry(service())
                .or_default()
                .add(sample, sample.label("class") == "5xx"),
            "switchyard_request_duration_seconds_bucket" => {
                services.entry(service()).or_default().add_bucket(sample);
            }
            "switchyard_calls_total" => calls
                .entry(pair())
                .or_default()
                .add(sample, sample.label("outcome") != "ok"),
            "switchyard_call_duration_seconds_bucket" => {
                calls.entry(pair()).or_default().add_bucket(sample);
            }
            _ => {}
        }
    }
    (services, calls)
}

/// One caller → callee pair's call totals on the node where the caller runs, as a peer
/// hands them to a node drawing the mesh's call graph (the wire form of its [`Counted`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CallTraffic {
    pub(crate) caller: String,
    pub(crate) callee: String,
    pub(crate) count: u64,
    pub(crate) errors: u64,
    /// Cumulative latency buckets: upper bound in microseconds (`u64::MAX` for `+Inf`) →
    /// calls at or below.
    pub(crate) buckets: Vec<(u64, u64)>,
}

/// The most pairs a peer's answer may carry; more is refused whole (a pair is a caller and a
/// callee of the peer's services, so a real node has far fewer).
pub(crate) const MAX_CALL_PAIRS: usize = 4096;

/// This node's call totals in `samples` (its own metrics), for a peer that asks.
pub(crate) fn call_traffic(samples: &[Sample]) -> Vec<CallTraffic> {
    let (_, calls) = counted(samples);
    calls
        .into_iter()
        .take(MAX_CALL_PAIRS)
        .map(|((caller, callee), counted)| CallTraffic {
            caller,
            callee,
            count: counted.count as u64,
            errors: counted.errors as u64,
            buckets: counted
                .buckets
                .iter()
                .map(|(bound, n)| {
                    let micros = if bound.0.is_finite() {
                        (bound.0 * 1e6).round() as u64
                    } else {
                        u64::MAX
                    };
                    (micros, *n as u64)
                })
                .collect(),
        })
        .collect()
}

impl From<&CallTraffic> for Counted {
    fn from(traffic: &CallTraffic) -> Self {
        Self {
            count: traffic.count as f64,
            errors: traffic.errors as f64,
            buckets: traffic
                .buckets
                .iter()
                .map(|&(micros, n)| {
                    let bound = if micros == u64::MAX {
                        f64::INFINITY
                    } else {
                        micros as f64 / 1e6
                    };
                    (OrderedBound(bound), n as f64)
                })
                .collect(),
        }
    }
}

impl Totals {
    /// This node's `samples` and what `peers` answered about their calls.
    fn of(node: &str, samples: &[Sample], peers: &[(String, Vec<CallTraffic>)]) -> Self {
        let (services, own_calls) = counted(samples);
        let mut calls: BTreeMap<(String, String, String), Counted> = own_calls
            .into_iter()
            .map(|((caller, callee), counted)| ((node.to_owned(), caller, callee), counted))
            .collect();
        let mut nodes = BTreeSet::from([node.to_owned()]);
        for (peer, traffic) in peers {
            if peer == node {
                continue;
            }
            nodes.insert(peer.clone());
            for pair in traffic {
                calls.insert(
                    (peer.clone(), pair.caller.clone(), pair.callee.clone()),
                    Counted::from(pair),
                );
            }
        }
        Self {
            services,
            calls,
            nodes,
        }
    }
}

/// Traffic over the window, as the page shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Rates {
    /// Per second over the window.
    pub(crate) per_second: f64,
    /// The share of them that failed (5xx, or a call's outcome other than ok), if any came.
    pub(crate) error_rate: Option<f64>,
    /// Latency quantiles over the window, in milliseconds, if any came.
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    /// Since the node started (for a call pair: since each node counting it started).
    pub(crate) total: u64,
}

/// What changed between looks, summed over the nodes that count the same thing (a call pair
/// whose callers run on several nodes); each node's change is taken against its own
/// baseline, as a node joins the window later than the others.
#[derive(Debug, Default)]
struct Change {
    per_second: f64,
    count: f64,
    errors: f64,
    buckets: BTreeMap<OrderedBound, f64>,
    total: f64,
}

impl Change {
    /// Adds the change from `then` (nothing counted, when `None`) to `now` over `seconds`.
    /// Totals that went down (a restarted peer) count as no change.
    fn add(&mut self, now: &Counted, then: Option<&Counted>, seconds: f64) {
        let empty = Counted::default();
        let then = then.unwrap_or(&empty);
        let count = (now.count - then.count).max(0.0);
        self.count += count;
        self.errors += (now.errors - then.errors).max(0.0);
        if seconds > 0.0 {
            self.per_second += count / seconds;
        }
        self.total += now.count;
        for (bound, n) in &now.buckets {
            let before = then.buckets.get(bound).copied().unwrap_or(0.0);
            *self.buckets.entry(*bound).or_default() += (n - before).max(0.0);
        }
    }

    fn rates(&self) -> Rates {
        let buckets: Vec<(f64, f64)> = self.buckets.iter().map(|(b, n)| (b.0, *n)).collect();
        let ms = |q| quantile(&buckets, q).map(|seconds| seconds * 1000.0);
        Rates {
            per_second: self.per_second,
            error_rate: (self.count > 0.0).then(|| self.errors / self.count),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            total: self.total as u64,
        }
    }
}

/// `q`'s quantile of cumulative `buckets` (upper bound, count at or below), interpolated
/// within its bucket as Prometheus's `histogram_quantile` does; the highest finite bound
/// when it falls in `+Inf`'s bucket.
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower.0);
            }
            let in_bucket = count - lower.1;
            let share = if in_bucket > 0.0 {
                (rank - lower.1) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (bound - lower.0) * share);
        }
        lower = (bound, count);
    }
    Some(lower.0)
}

/// The looks of the last [`WINDOW`], and one older as the baseline.
#[derive(Debug)]
pub(crate) struct LiveWindow {
    node: String,
    looks: VecDeque<(Instant, Totals)>,
}

/// One service's traffic in the window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct ServiceRates {
    pub(crate) service: String,
    #[serde(flatten)]
    pub(crate) rates: Rates,
}

/// One caller → callee pair's calls in the window, on every node that told.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct CallRates {
    pub(crate) caller: String,
    pub(crate) callee: String,
    /// The nodes whose callers made these calls.
    pub(crate) nodes: Vec<String>,
    #[serde(flatten)]
    pub(crate) rates: Rates,
}

/// Traffic over the window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct LiveTraffic {
    /// How long the window is (0 at the first look: rates need two).
    pub(crate) window_seconds: f64,
    pub(crate) services: Vec<ServiceRates>,
    /// Calls across the mesh: this node's and those of every peer that answered.
    pub(crate) calls: Vec<CallRates>,
    /// The nodes whose calls are in `calls` (this node first).
    pub(crate) call_nodes: Vec<String>,
}

impl LiveWindow {
    /// A window for `node` whose first baseline is `started`, when every total was 0: the
    /// first look has rates already.
    pub(crate) fn starting(node: &str, started: Instant) -> Self {
        let baseline = Totals {
            nodes: BTreeSet::from([node.to_owned()]),
            ..Totals::default()
        };
        Self {
            node: node.to_owned(),
            looks: VecDeque::from([(started, baseline)]),
        }
    }

    /// Takes a look at `samples` (this node's metrics at `now`) and at what `peers` said of
    /// their calls, and answers the traffic since the baseline. A peer heard from for the
    /// first time counts from this look on (its totals so far are history, not the window's).
    pub(crate) fn look(
        &mut self,
        now: Instant,
        samples: &[Sample],
        peers: &[(String, Vec<CallTraffic>)],
    ) -> LiveTraffic {
        let totals = Totals::of(&self.node, samples, peers);
        self.looks.push_back((now, totals));
        // Keep one look at least WINDOW old as the baseline, none older.
        while self
            .looks
            .get(1)
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= WINDOW)
        {
            self.looks.pop_front();
        }
        let Some(((then_at, then), (_, current))) = self.looks.front().zip(self.looks.back())
        else {
            return LiveTraffic {
                window_seconds: 0.0,
                services: Vec::new(),
                calls: Vec::new(),
                call_nodes: Vec::new(),
            };
        };
        let seconds = now.saturating_duration_since(*then_at).as_secs_f64();
        let services = current
            .services
            .iter()
            .map(|(service, traffic)| {
                let mut change = Change::default();
                change.add(traffic, then.services.get(service), seconds);
                ServiceRates {
                    service: service.clone(),
                    rates: change.rates(),
                }
            })
            .collect();
        // Each node's baseline: the oldest look in the window that heard from it.
        let baselines: BTreeMap<&str, (f64, &Totals)> = current
            .nodes
            .iter()
            .filter_map(|node| {
                let (at, totals) = self
                    .looks
                    .iter()
                    .find(|(_, totals)| totals.nodes.contains(node))?;
                let seconds = now.saturating_duration_since(*at).as_secs_f64();
                Some((node.as_str(), (seconds, totals)))
            })
            .collect();
        let mut pairs: BTreeMap<(&str, &str), (Change, Vec<String>)> = BTreeMap::new();
        for ((node, caller, callee), traffic) in &current.calls {
            let Some((seconds, baseline)) = baselines.get(node.as_str()) else {
                continue;
            };
            let then = baseline
                .calls
                .get(&(node.clone(), caller.clone(), callee.clone()));
            let (change, nodes) = pairs.entry((caller, callee)).or_default();
            change.add(traffic, then, *seconds);
            nodes.push(node.clone());
        }
        let mut call_nodes: Vec<String> = vec![self.node.clone()];
        call_nodes.extend(current.nodes.iter().filter(|n| **n != self.node).cloned());
        LiveTraffic {
            window_seconds: seconds,
            services,
            calls: pairs
                .into_iter()
                .map(|((caller, callee), (change, nodes))| CallRates {
                    caller: caller.to_owned(),
                    callee: callee.to_owned(),
                    nodes,
                    rates: change.rates(),
                })
                .collect(),
            call_nodes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP switchyard_requests Requests.
# TYPE switchyard_requests counter
switchyard_requests_total{service="hello",method="GET",route="/hello/{name}",class="2xx"} 90
switchyard_requests_total{service="hello",method="GET",route="/hello/{name}",class="5xx"} 10
switchyard_request_duration_seconds_bucket{service="hello",method="GET",route="/hello/{name}",le="0.001"} 50
switchyard_request_duration_seconds_bucket{service="hello",method="GET",route="/hello/{name}",le="0.01"} 100
switchyard_request_duration_seconds_bucket{service="hello",method="GET",route="/hello/{name}",le="+Inf"} 100
switchyard_calls_total{caller="a",callee="b \"q\"",outcome="ok"} 3
switchyard_calls_total{caller="a",callee="b \"q\"",outcome="timeout"} 1
switchyard_mesh_peers 2
"#;

    #[test]
    fn the_text_parses_with_escaped_labels_and_braces_in_values() {
        let samples = parse(TEXT);
        assert_eq!(samples.len(), 8);
        assert_eq!(samples[0].label("route"), "/hello/{name}");
        assert_eq!(samples[5].label("callee"), "b \"q\"");
        assert_eq!(samples[7].name, "switchyard_mesh_peers");
        assert_eq!(samples[7].value, 2.0);
        assert_eq!(samples[4].label("le"), "+Inf");
        assert!(parse("switchyard_x{a=\"unterminated").is_empty());
    }

    #[test]
    fn quantiles_interpolate_within_their_bucket() {
        let buckets = [(0.001, 50.0), (0.01, 100.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile(&buckets, 0.5), Some(0.001));
        let p75 = quantile(&buckets, 0.75);
        assert!(
            p75.is_some_and(|p75| (p75 - 0.0055).abs() < 1e-9),
            "{p75:?}"
        );
        assert_eq!(quantile(&[(0.1, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
        assert_eq!(
            quantile(&[(0.1, 1.0), (f64::INFINITY, 4.0)], 0.99),
            Some(0.1)
        );
    }

    #[test]
    fn rates_are_the_difference_to_the_oldest_look_in_the_window() {
        let start = Instant::now();
        let mut window = LiveWindow::starting("n1", start);
        let first = window.look(start, &parse(""), &[]);
        assert_eq!(first.window_seconds, 0.0);
        let later = window.look(start + Duration::from_secs(5), &parse(TEXT), &[]);
        assert_eq!(later.window_seconds, 5.0);
        let hello = &later.services[0];
        assert_eq!(hello.service, "hello");
        assert_eq!(hello.rates.per_second, 20.0);
        assert_eq!(hello.rates.error_rate, Some(0.1));
        assert_eq!(hello.rates.p50_ms, Some(1.0));
        let call = &later.calls[0];
        assert_eq!((call.caller.as_str(), call.rates.total), ("a", 4));
        assert_eq!(call.rates.error_rate, Some(0.25));
        // Nothing new for 20 s: the start look leaves the window, the rates fall to 0.
        window.look(start + Duration::from_secs(16), &parse(TEXT), &[]);
        let idle = window.look(start + Duration::from_secs(27), &parse(TEXT), &[]);
        assert_eq!(idle.window_seconds, 11.0);
        assert_eq!(idle.services[0].rates.per_second, 0.0);
        assert_eq!(idle.services[0].rates.error_rate, None);
        assert_eq!(idle.services[0].rates.total, 100);
    }

    #[test]
    fn peers_calls_join_the_graph_from_the_look_that_first_hears_them() {
        let start = Instant::now();
        let mut window = LiveWindow::starting("n1", start);
        let own = parse(TEXT);
        let ours = call_traffic(&own);
        assert_eq!(ours.len(), 1);
        assert_eq!((ours[0].count, ours[0].errors), (4, 1));
        // n2's callers of the same pair: 1000 calls so far, history rather than the window's.
        let peer = |count| {
            vec![(
                "n2".to_owned(),
                vec![CallTraffic {
                    caller: "a".into(),
                    callee: "b \"q\"".into(),
                    count,
                    errors: 0,
                    buckets: vec![(1_000, count), (u64::MAX, count)],
                }],
            )]
        };
        let first = window.look(start + Duration::from_secs(5), &own, &peer(1000));
        assert_eq!(first.call_nodes, ["n1", "n2"]);
        assert_eq!(first.calls.len(), 1);
        assert_eq!(first.calls[0].nodes, ["n1", "n2"]);
        assert_eq!(first.calls[0].rates.per_second, 4.0 / 5.0);
        assert_eq!(first.calls[0].rates.total, 1004);
        // 5 s later n2 made 50 more, n1 none: 10/s from n2, all under 1 ms.
        let later = window.look(start + Duration::from_secs(10), &own, &peer(1050));
        let call = &later.calls[0];
        assert_eq!(call.rates.per_second, 4.0 / 10.0 + 50.0 / 5.0);
        assert_eq!(call.rates.error_rate, Some(1.0 / 54.0));
        assert!(call.rates.p50_ms.is_some_and(|p50| p50 <= 1.0), "{call:?}");
        // A peer that restarted counts from zero again, never as negative traffic.
        let restarted = window.look(start + Duration::from_secs(11), &own, &peer(3));
        assert!(restarted.calls[0].rates.per_second >= 0.0);
        // Totals survive the trip through their wire form.
        let counted = &Totals::of("n1", &own, &[]).calls;
        let back = Counted::from(&ours[0]);
        assert_eq!(
            counted.get(&("n1".into(), "a".into(), "b \"q\"".into())),
            Some(&back)
        );
    }
}
