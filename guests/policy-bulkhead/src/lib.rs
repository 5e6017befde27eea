//! Bulkhead: at most `max_concurrent` calls in flight through this binding; more are
//! rejected at once, so one slow callee cannot tie up every caller.
use switchyard_sdk::policy::{AfterDecision, BeforeDecision, CallInfo, Config, Outcome, Policy};

struct Bulkhead {
    max: u32,
    in_flight: u32,
}

impl Policy for Bulkhead {
    fn configure(config: &Config) -> Result<Self, String> {
        let max: u32 = config.get_or("max_concurrent", 10)?;
        if max == 0 {
            return Err("max_concurrent must be at least 1".into());
        }
        Ok(Bulkhead { max, in_flight: 0 })
    }

    fn before_call(&mut self, _call: &CallInfo) -> BeforeDecision {
        if self.in_flight >= self.max {
            return BeforeDecision::Reject(format!("bulkhead full ({} in flight)", self.max));
        }
        self.in_flight += 1;
        BeforeDecision::Proceed
    }

    fn after_call(
        &mut self,
        _call: &CallInfo,
        _outcome: &Outcome,
        _elapsed_us: u64,
    ) -> AfterDecision {
        self.in_flight = self.in_flight.saturating_sub(1);
        AfterDecision::Done
    }

    fn snapshot(&self) -> Vec<u8> {
        self.in_flight.to_le_bytes().to_vec()
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        self.in_flight = switchyard_sdk::policy::decode_u32(state)?;
        Ok(())
    }
}

switchyard_sdk::export_policy!(Bulkhead);
