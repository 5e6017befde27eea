//! Circuit breaker: opens after `consecutive_failures` failures in a row, or when the
//! failure rate over the last `window` calls reaches `failure_rate` (once `min_calls` were
//! seen); stays open for `open_ms`, then lets `probes` calls through (half-open): if they all
//! succeed it closes, if one fails it opens again. Its state survives a hot swap.
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use switchyard_sdk::policy::{
    self, AfterDecision, BeforeDecision, CallInfo, Config, Outcome, Policy,
};

enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32, passed: u32 },
}

struct Breaker {
    consecutive_failures: u32,
    failure_rate: f64,
    window: usize,
    min_calls: usize,
    open_for: Duration,
    probes: u32,
    state: State,
    consecutive: u32,
    recent: VecDeque<bool>,
}

impl Breaker {
    fn open(&mut self, why: &str) {
        switchyard_sdk::log::warn!("circuit opens: {why}");
        policy::report_state("open");
        self.state = State::Open {
            until: Instant::now() + self.open_for,
        };
        self.consecutive = 0;
        self.recent.clear();
    }
}

impl Policy for Breaker {
    fn configure(config: &Config) -> Result<Self, String> {
        let failure_rate: f64 = config.get_or("failure_rate", 0.5)?;
        if !(0.0..=1.0).contains(&failure_rate) {
            return Err(format!(
                "failure_rate must be within 0..=1, got {failure_rate}"
            ));
        }
        Ok(Breaker {
            consecutive_failures: config.get_or("consecutive_failures", 5)?,
            failure_rate,
            window: config.get_or("window", 20)?,
            min_calls: config.get_or("min_calls", 10)?,
            open_for: Duration::from_millis(config.get_or("open_ms", 1000)?),
            probes: config.get_or::<u32>("probes", 1)?.max(1),
            state: {
                policy::report_state("closed");
                State::Closed
            },
            consecutive: 0,
            recent: VecDeque::new(),
        })
    }

    fn before_call(&mut self, _call: &CallInfo) -> BeforeDecision {
        if let State::Open { until } = self.state
            && Instant::now() >= until
        {
            self.state = State::HalfOpen {
                in_flight: 0,
                passed: 0,
            };
            policy::report_state("half-open");
        }
        match &mut self.state {
            State::Closed => BeforeDecision::Proceed,
            State::Open { .. } => BeforeDecision::Reject("circuit open".into()),
            State::HalfOpen { in_flight, passed } => {
                if *in_flight + *passed < self.probes {
                    *in_flight += 1;
                    BeforeDecision::Proceed
                } else {
                    BeforeDecision::Reject("circuit half-open: probing".into())
                }
            }
        }
    }

    fn after_call(
        &mut self,
        _call: &CallInfo,
        outcome: &Outcome,
        _elapsed_us: u64,
    ) -> AfterDecision {
        let failed = policy::is_failure(outcome);
        match &mut self.state {
            State::Closed => {
                self.consecutive = if failed { self.consecutive + 1 } else { 0 };
                self.recent.push_back(failed);
                while self.recent.len() > self.window {
                    self.recent.pop_front();
                }
                let failures = self.recent.iter().filter(|f| **f).count();
                let rate = failures as f64 / self.recent.len().max(1) as f64;
                if self.consecutive >= self.consecutive_failures {
                    self.open(&format!("{} failures in a row", self.consecutive));
                } else if self.recent.len() >= self.min_calls && rate >= self.failure_rate {
                    self.open(&format!(
                        "failure rate {rate:.2} over {} calls",
                        self.recent.len()
                    ));
                }
            }
            State::HalfOpen { in_flight, passed } => {
                *in_flight = in_flight.saturating_sub(1);
                if failed {
                    self.open("a probe failed");
                } else {
                    *passed += 1;
                    if *passed >= self.probes {
                        switchyard_sdk::log::info!("circuit closes: probes succeeded");
                        policy::report_state("closed");
                        self.state = State::Closed;
                        self.consecutive = 0;
                        self.recent.clear();
                    }
                }
            }
            State::Open { .. } => {}
        }
        AfterDecision::Done
    }

    /// `[kind][open ms left: u32][consecutive: u32]`, kind 0 closed, 1 open, 2 half-open.
    fn snapshot(&self) -> Vec<u8> {
        let (kind, left) = match self.state {
            State::Closed => (0u8, 0u32),
            State::Open { until } => {
                let left = until.saturating_duration_since(Instant::now()).as_millis();
                (1, u32::try_from(left).unwrap_or(u32::MAX))
            }
            State::HalfOpen { .. } => (2, 0),
        };
        let mut out = vec![kind];
        out.extend_from_slice(&left.to_le_bytes());
        out.extend_from_slice(&self.consecutive.to_le_bytes());
        out
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let [kind, rest @ ..] = state else {
            return Ok(());
        };
        let left = policy::decode_u32(rest.get(..4).unwrap_or_default())?;
        self.consecutive = policy::decode_u32(rest.get(4..8).unwrap_or_default())?;
        self.state = match kind {
            0 => State::Closed,
            // A half-open breaker comes back open briefly, then probes again.
            1 | 2 => State::Open {
                until: Instant::now() + Duration::from_millis(u64::from(left)),
            },
            other => return Err(format!("unknown breaker state {other} in snapshot")),
        };
        if *kind != 0 {
            policy::report_state("open");
        }
        Ok(())
    }
}

switchyard_sdk::export_policy!(Breaker);
