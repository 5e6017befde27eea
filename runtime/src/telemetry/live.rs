//! The live view: what the node's metrics say about the last few seconds.
//!
//! The live page (admin `/`) and `switchyard top` show rates, latency quantiles and error
//! rates *now*, while the metrics are totals since the node started. [`LiveWindow`] keeps the
//! totals of earlier looks and answers the difference to the oldest one within
//! [`WINDOW`] (or the oldest it has): the same arithmetic as Prometheus's `rate` and
//! `histogram_quantile`, done by the node so that a page needs no Prometheus. It reads the
//! node's own Prometheus text ([`parse`]), the one place metrics are written, rather than
//! counting anything twice; it decides by the `now` it is given.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

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

/// What the window remembers of one look: traffic totals by service and by call pair.
#[derive(Debug, Clone, Default, PartialEq)]
struct Totals {
    services: BTreeMap<String, Counted>,
    calls: BTreeMap<(String, String), Counted>,
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

impl Totals {
    fn of(samples: &[Sample]) -> Self {
        let mut totals = Self::default();
        for sample in samples {
            let service = || sample.label("service").to_owned();
            let pair = || {
                let key = |label| sample.label(label).to_owned();
                (key("caller"), key("callee"))
            };
            match sample.name.as_str() {
                "switchyard_requests_total" => totals
                    .services
                    .entry(service())
                    .or_default()
                    .add(sample, sample.label("class") == "5xx"),
                "switchyard_request_duration_seconds_bucket" => {
                    totals
                        .services
                        .entry(service())
                        .or_default()
                        .add_bucket(sample);
                }
                "switchyard_calls_total" => totals
                    .calls
                    .entry(pair())
                    .or_default()
                    .add(sample, sample.label("outcome") != "ok"),
                "switchyard_call_duration_seconds_bucket" => {
                    totals.calls.entry(pair()).or_default().add_bucket(sample);
                }
                _ => {}
            }
        }
        totals
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
    /// Since the node started.
    pub(crate) total: u64,
}

impl Rates {
    fn between(now: &Counted, then: Option<&Counted>, seconds: f64) -> Self {
        let empty = Counted::default();
        let then = then.unwrap_or(&empty);
        let count = (now.count - then.count).max(0.0);
        let errors = (now.errors - then.errors).max(0.0);
        let buckets: Vec<(f64, f64)> = now
            .buckets
            .iter()
            .map(|(bound, n)| {
                let before = then.buckets.get(bound).copied().unwrap_or(0.0);
                (bound.0, (n - before).max(0.0))
            })
            .collect();
        let ms = |q| quantile(&buckets, q).map(|seconds| seconds * 1000.0);
        Self {
            per_second: if seconds > 0.0 { count / seconds } else { 0.0 },
            error_rate: (count > 0.0).then(|| errors / count),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            total: now.count as u64,
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
    looks: VecDeque<(Instant, Totals)>,
}

/// One service's traffic in the window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct ServiceRates {
    pub(crate) service: String,
    #[serde(flatten)]
    pub(crate) rates: Rates,
}

/// One caller → callee pair's calls in the window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct CallRates {
    pub(crate) caller: String,
    pub(crate) callee: String,
    #[serde(flatten)]
    pub(crate) rates: Rates,
}

/// Traffic over the window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct LiveTraffic {
    /// How long the window is (0 at the first look: rates need two).
    pub(crate) window_seconds: f64,
    pub(crate) services: Vec<ServiceRates>,
    pub(crate) calls: Vec<CallRates>,
}

impl LiveWindow {
    /// A window whose first baseline is `started`, when every total was 0: the first look
    /// has rates already.
    pub(crate) fn starting(started: Instant) -> Self {
        Self {
            looks: VecDeque::from([(started, Totals::default())]),
        }
    }

    /// Takes a look at `samples` (the node's metrics at `now`) and answers the traffic since
    /// the baseline.
    pub(crate) fn look(&mut self, now: Instant, samples: &[Sample]) -> LiveTraffic {
        let totals = Totals::of(samples);
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
            };
        };
        let seconds = now.saturating_duration_since(*then_at).as_secs_f64();
        LiveTraffic {
            window_seconds: seconds,
            services: current
                .services
                .iter()
                .map(|(service, traffic)| ServiceRates {
                    service: service.clone(),
                    rates: Rates::between(traffic, then.services.get(service), seconds),
                })
                .collect(),
            calls: current
                .calls
                .iter()
                .map(|((caller, callee), traffic)| CallRates {
                    caller: caller.clone(),
                    callee: callee.clone(),
                    rates: Rates::between(
                        traffic,
                        then.calls.get(&(caller.clone(), callee.clone())),
                        seconds,
                    ),
                })
                .collect(),
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
        let mut window = LiveWindow::starting(start);
        let first = window.look(start, &parse(""));
        assert_eq!(first.window_seconds, 0.0);
        let later = window.look(start + Duration::from_secs(5), &parse(TEXT));
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
        window.look(start + Duration::from_secs(16), &parse(TEXT));
        let idle = window.look(start + Duration::from_secs(27), &parse(TEXT));
        assert_eq!(idle.window_seconds, 11.0);
        assert_eq!(idle.services[0].rates.per_second, 0.0);
        assert_eq!(idle.services[0].rates.error_rate, None);
        assert_eq!(idle.services[0].rates.total, 100);
    }
}
