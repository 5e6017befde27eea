//! Request logs: one structured line per sampled request, call or delivery, at target
//! `switchyard::requests` (`kind` = `request`, `call` or `delivery`), with its outcome,
//! duration and ids.
//!
//! `[telemetry] request_log` sets the share of requests and calls that get a line (0, the
//! default, logs none and costs one comparison); `request_log_off` names services whose
//! requests and calls are never logged. Lines are `info`, so the log filter decides too
//! (`SWITCHYARD_LOG=info,switchyard::requests=off`). A line may name a raw path: it is a log,
//! not a metric label.

use std::collections::BTreeSet;
use std::sync::Arc;

/// Which requests and calls get a line. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestLog {
    inner: Option<Arc<Sampling>>,
}

#[derive(Debug)]
struct Sampling {
    share: f64,
    quiet: BTreeSet<String>,
}

impl RequestLog {
    /// Logs `share` (0 to 1) of the requests and calls of every service but `quiet`.
    pub(crate) fn new(share: f64, quiet: impl IntoIterator<Item = String>) -> Self {
        if share <= 0.0 {
            return Self::default();
        }
        Self {
            inner: Some(Arc::new(Sampling {
                share,
                quiet: quiet.into_iter().collect(),
            })),
        }
    }

    /// Whether this request or call of `service` gets a line.
    pub(crate) fn sampled(&self, service: &str) -> bool {
        let Some(sampling) = &self.inner else {
            return false;
        };
        !sampling.quiet.contains(service)
            && (sampling.share >= 1.0 || fastrand::f64() < sampling.share)
    }
}

#[cfg(test)]
mod tests {
    use super::RequestLog;

    #[test]
    fn the_share_and_the_quiet_services_decide() {
        let none = RequestLog::new(0.0, []);
        assert!(!none.sampled("hello"));
        let all = RequestLog::new(1.0, ["noisy".to_owned()]);
        assert!(all.sampled("hello"));
        assert!(!all.sampled("noisy"));
        let some = RequestLog::new(0.5, []);
        let logged = (0..10_000).filter(|_| some.sampled("hello")).count();
        assert!((4_000..6_000).contains(&logged), "{logged} of 10000 at 0.5");
    }
}
