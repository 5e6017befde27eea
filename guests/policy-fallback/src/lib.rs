//! Fallback: when a call fails (no answer, a 5xx, or a rejection by an inner policy such as
//! an open breaker), the caller gets `status` with `body` instead.
use switchyard_sdk::policy::{
    self, AfterDecision, CallInfo, CannedResponse, Config, Outcome, Policy,
};

struct Fallback {
    status: u16,
    body: String,
    on_rejected: bool,
}

impl Policy for Fallback {
    fn configure(config: &Config) -> Result<Self, String> {
        Ok(Fallback {
            status: config.get_or("status", 200)?,
            body: config.get("body").unwrap_or("fallback").to_owned(),
            on_rejected: config.get_or("on_rejected", true)?,
        })
    }

    fn after_call(
        &mut self,
        _call: &CallInfo,
        outcome: &Outcome,
        _elapsed_us: u64,
    ) -> AfterDecision {
        let rejected = matches!(outcome, Outcome::Rejected(_));
        if policy::is_failure(outcome) || (rejected && self.on_rejected) {
            return AfterDecision::Respond(CannedResponse {
                status: self.status,
                headers: vec![("x-switchyard-fallback".into(), "1".into())],
                body: self.body.clone().into_bytes(),
            });
        }
        AfterDecision::Done
    }
}

switchyard_sdk::export_policy!(Fallback);
