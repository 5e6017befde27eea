//! A bad policy release, for rollback tests: it configures and takes the old version's state
//! fine, then fails (a panic is a trap) in every decision.
use switchyard_sdk::policy::{AfterDecision, BeforeDecision, CallInfo, Config, Outcome, Policy};

struct Broken;

impl Policy for Broken {
    fn configure(_config: &Config) -> Result<Self, String> {
        Ok(Broken)
    }

    fn before_call(&mut self, _call: &CallInfo) -> BeforeDecision {
        panic!("this policy release is broken")
    }

    fn after_call(
        &mut self,
        _call: &CallInfo,
        _outcome: &Outcome,
        _elapsed_us: u64,
    ) -> AfterDecision {
        panic!("this policy release is broken")
    }
}

switchyard_sdk::export_policy!(Broken);
