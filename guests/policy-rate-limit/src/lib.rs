//! Token-bucket rate limit: `rate` calls per second on average, bursts of up to `burst`.
//! Calls over the limit are rejected at once (the caller sees `rejected`).
use std::time::Instant;

use switchyard_sdk::policy::{BeforeDecision, CallInfo, Config, Policy};

struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl Policy for RateLimit {
    fn configure(config: &Config) -> Result<Self, String> {
        let rate: f64 = config.get_or("rate", 100.0)?;
        let burst: f64 = config.get_or("burst", rate)?;
        if rate <= 0.0 || burst < 1.0 {
            return Err(format!(
                "need rate > 0 and burst >= 1, got rate {rate}, burst {burst}"
            ));
        }
        Ok(RateLimit {
            rate,
            burst,
            tokens: burst,
            refilled: Instant::now(),
        })
    }

    fn before_call(&mut self, _call: &CallInfo) -> BeforeDecision {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            BeforeDecision::Proceed
        } else {
            BeforeDecision::Reject(format!("rate limited ({} calls/s)", self.rate))
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        self.tokens.to_le_bytes().to_vec()
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        if let Ok(bytes) = <[u8; 8]>::try_from(state) {
            self.tokens = f64::from_le_bytes(bytes).clamp(0.0, self.burst);
        }
        Ok(())
    }
}

switchyard_sdk::export_policy!(RateLimit);
