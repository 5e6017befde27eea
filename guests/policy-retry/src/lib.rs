//! Retry with exponential backoff, full jitter and a retry budget.
//!
//! A failed attempt (no answer, or 5xx) is retried up to `max_attempts` in all, after
//! `base_ms * 2^(attempt-1)` capped at `max_ms`, times a random factor in [0.5, 1) so clients
//! do not retry in lockstep. The budget keeps retries from multiplying load when the callee is
//! down: every first attempt earns `budget_ratio` of a retry token (at most `budget_cap`
//! saved), every retry spends one. The node never retries past the call's deadline.
//!
//! Bound to a queue (`[[bind]] queue = ...`), the same backoff spaces redeliveries of a failed
//! message, and after `max_attempts` failed deliveries it is dead-lettered. The retry budget
//! is for calls only: a queued message waits, it does not add load while it waits.
use switchyard_sdk::policy::{
    self, AfterDecision, CallInfo, Config, Delivery, DeliveryDecision, Outcome, Policy,
};

struct Retry {
    max_attempts: u32,
    base_ms: u32,
    max_ms: u32,
    ratio: f64,
    cap: f64,
    tokens: f64,
    rng: u64,
}

impl Retry {
    /// The pause before attempt `attempt + 1`: exponential, capped, with full jitter.
    fn backoff_ms(&mut self, attempt: u32) -> u32 {
        let exp = self
            .base_ms
            .saturating_mul(1 << attempt.saturating_sub(1).min(20));
        let ceiling = exp.min(self.max_ms) as f64;
        (ceiling * (0.5 + 0.5 * self.next_unit())) as u32
    }

    /// xorshift64*: jitter needs no cryptographic randomness.
    fn next_unit(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Policy for Retry {
    fn configure(config: &Config) -> Result<Self, String> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9);
        let cap: f64 = config.get_or("budget_cap", 10.0)?;
        Ok(Retry {
            max_attempts: config.get_or::<u32>("max_attempts", 3)?.max(1),
            base_ms: config.get_or("base_ms", 50)?,
            max_ms: config.get_or("max_ms", 1000)?,
            ratio: config.get_or("budget_ratio", 0.2)?,
            cap,
            tokens: cap,
            rng: seed | 1,
        })
    }

    fn after_call(
        &mut self,
        call: &CallInfo,
        outcome: &Outcome,
        _elapsed_us: u64,
    ) -> AfterDecision {
        if call.attempt == 1 {
            self.tokens = (self.tokens + self.ratio).min(self.cap);
        }
        if !policy::is_failure(outcome) || call.attempt >= self.max_attempts {
            return AfterDecision::Done;
        }
        if self.tokens < 1.0 {
            switchyard_sdk::log::debug!("retry budget spent; not retrying {}", call.service);
            return AfterDecision::Done;
        }
        self.tokens -= 1.0;
        AfterDecision::RetryAfter(self.backoff_ms(call.attempt))
    }

    fn on_delivery_failure(&mut self, message: &Delivery, attempt: u32) -> DeliveryDecision {
        if attempt >= self.max_attempts {
            return DeliveryDecision::DeadLetter(format!(
                "{} failed {attempt} deliveries (max_attempts = {})",
                message.id, self.max_attempts
            ));
        }
        DeliveryDecision::RedeliverAfter(self.backoff_ms(attempt))
    }

    fn snapshot(&self) -> Vec<u8> {
        self.tokens.to_le_bytes().to_vec()
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        if let Ok(bytes) = <[u8; 8]>::try_from(state) {
            self.tokens = f64::from_le_bytes(bytes).clamp(0.0, self.cap);
        }
        Ok(())
    }
}

switchyard_sdk::export_policy!(Retry);
