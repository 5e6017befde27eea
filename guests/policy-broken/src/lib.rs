//! A bad policy release, for rollback tests: it configures and takes the old version's state
//! fine, then fails (a panic is a trap) in every decision. Configured with
//! `logs_per_call = "N"`, it is bad the other way: it floods the log with N lines of 1 KiB
//! before each call, which it then lets through.
use switchyard_sdk::policy::{AfterDecision, BeforeDecision, CallInfo, Config, Outcome, Policy};

struct Broken {
    logs_per_call: Option<usize>,
}

impl Policy for Broken {
    fn configure(config: &Config) -> Result<Self, String> {
        let logs_per_call = config
            .get("logs_per_call")
            .map(|n| n.parse().map_err(|err| format!("logs_per_call: {err}")))
            .transpose()?;
        Ok(Broken { logs_per_call })
    }

    fn before_call(&mut self, call: &CallInfo) -> BeforeDecision {
        let Some(lines) = self.logs_per_call else {
            panic!("this policy release is broken")
        };
        let line = "x".repeat(1024);
        for n in 0..lines {
            switchyard_sdk::log::info!("{n:04} before {}: {line}", call.service);
        }
        BeforeDecision::Proceed
    }

    fn after_call(
        &mut self,
        _call: &CallInfo,
        _outcome: &Outcome,
        _elapsed_us: u64,
    ) -> AfterDecision {
        if self.logs_per_call.is_some() {
            return AfterDecision::Done;
        }
        panic!("this policy release is broken")
    }
}

switchyard_sdk::export_policy!(Broken);
