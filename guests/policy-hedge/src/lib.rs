//! Hedged requests: when a call has not answered by the `percentile` (default p95) latency of
//! the last `window` calls, the node sends a second attempt and takes the first answer. Until
//! `min_samples` calls were seen it does not hedge. `after_ms` sets a fixed delay instead.
use std::collections::VecDeque;

use switchyard_sdk::policy::{AfterDecision, BeforeDecision, CallInfo, Config, Outcome, Policy};

struct Hedge {
    fixed_ms: Option<u32>,
    percentile: f64,
    min_samples: usize,
    window: usize,
    latencies_us: VecDeque<u64>,
}

impl Hedge {
    fn threshold_ms(&self) -> Option<u32> {
        if let Some(ms) = self.fixed_ms {
            return Some(ms);
        }
        if self.latencies_us.len() < self.min_samples {
            return None;
        }
        let mut sorted: Vec<u64> = self.latencies_us.iter().copied().collect();
        sorted.sort_unstable();
        let rank = ((sorted.len() as f64 * self.percentile).ceil() as usize).clamp(1, sorted.len());
        Some(
            u32::try_from(sorted[rank - 1].div_ceil(1000))
                .unwrap_or(u32::MAX)
                .max(1),
        )
    }
}

impl Policy for Hedge {
    fn configure(config: &Config) -> Result<Self, String> {
        let percentile: f64 = config.get_or("percentile", 0.95)?;
        if !(0.0..1.0).contains(&percentile) || percentile == 0.0 {
            return Err(format!(
                "percentile must be within (0, 1), got {percentile}"
            ));
        }
        Ok(Hedge {
            fixed_ms: config
                .get("after_ms")
                .map(str::parse)
                .transpose()
                .map_err(|e| format!("config `after_ms`: {e}"))?,
            percentile,
            min_samples: config.get_or("min_samples", 20)?,
            window: config.get_or("window", 200)?,
            latencies_us: VecDeque::new(),
        })
    }

    fn before_call(&mut self, _call: &CallInfo) -> BeforeDecision {
        match self.threshold_ms() {
            Some(ms) => BeforeDecision::Hedge(ms),
            None => BeforeDecision::Proceed,
        }
    }

    fn after_call(
        &mut self,
        _call: &CallInfo,
        outcome: &Outcome,
        elapsed_us: u64,
    ) -> AfterDecision {
        if matches!(outcome, Outcome::Replied(status) if *status < 500) {
            self.latencies_us.push_back(elapsed_us);
            while self.latencies_us.len() > self.window {
                self.latencies_us.pop_front();
            }
        }
        AfterDecision::Done
    }
}

switchyard_sdk::export_policy!(Hedge);
