//! Write resilience policies: components of world `resilience-policy` that the node runs at
//! the decision points of the calls they are bound to in the manifest.
//!
//! A policy is a type implementing [`Policy`], exported with
//! [`export_policy!`](crate::export_policy). The node keeps **one instance per binding**,
//! shared by every call on the node, so `&mut self` state (counters, windows, buckets) is
//! exact. Every method but [`Policy::configure`] has a default that does nothing.
//!
//! ```no_run
//! use switchyard_sdk::policy::{self, AfterDecision, BeforeDecision, CallInfo, Config, Outcome, Policy};
//!
//! /// Rejects every call after `limit` calls.
//! struct Quota { used: u32, limit: u32 }
//!
//! impl Policy for Quota {
//!     fn configure(config: &Config) -> Result<Self, String> {
//!         Ok(Quota { used: 0, limit: config.get_or("limit", 100)? })
//!     }
//!     fn before_call(&mut self, _call: &CallInfo) -> BeforeDecision {
//!         if self.used >= self.limit {
//!             return BeforeDecision::Reject("quota used up".into());
//!         }
//!         self.used += 1;
//!         BeforeDecision::Proceed
//!     }
//!     fn snapshot(&self) -> Vec<u8> { self.used.to_le_bytes().to_vec() }
//!     fn restore(&mut self, state: &[u8]) -> Result<(), String> {
//!         self.used = policy::decode_u32(state)?;
//!         Ok(())
//!     }
//! }
//!
//! switchyard_sdk::export_policy!(Quota);
//! ```

use std::str::FromStr;

use crate::policy_bindings::exports::switchyard::runtime::policy as wit;

pub use wit::{
    AfterDecision, BeforeDecision, CallInfo, Candidate, CannedResponse, Delivery, DeliveryDecision,
    Outcome,
};

/// The policy's `config` table from the manifest.
pub struct Config {
    entries: Vec<(String, String)>,
}

impl Config {
    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `key` parsed as `T`, or `default` when absent; a value that does not parse is an
    /// error naming the key, which stops the node from starting with it.
    pub fn get_or<T: FromStr>(&self, key: &str, default: T) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|err| format!("config `{key}` = {raw:?}: {err}")),
        }
    }
}

/// A resilience policy. See the module docs.
pub trait Policy: Sized + 'static {
    /// Builds the policy from its manifest config; `Err` stops the node (or the swap).
    fn configure(config: &Config) -> Result<Self, String>;

    /// Before a call is sent: let it through, reject it, or answer in the callee's place.
    fn before_call(&mut self, call: &CallInfo) -> BeforeDecision {
        let _ = call;
        BeforeDecision::Proceed
    }

    /// After a call ended (`elapsed_us` for this attempt): accept the outcome, retry after a
    /// pause, or answer something else (a fallback).
    fn after_call(&mut self, call: &CallInfo, outcome: &Outcome, elapsed_us: u64) -> AfterDecision {
        let _ = (call, outcome, elapsed_us);
        AfterDecision::Done
    }

    /// Picks one of several instances (an index), or `None` to leave it to the strategy.
    fn pick(&mut self, call: &CallInfo, candidates: &[Candidate]) -> Option<u32> {
        let _ = (call, candidates);
        None
    }

    /// A queued message's delivery failed `attempt` times.
    fn on_delivery_failure(&mut self, message: &Delivery, attempt: u32) -> DeliveryDecision {
        let _ = message;
        if attempt >= 5 {
            DeliveryDecision::DeadLetter(format!("gave up after {attempt} attempts"))
        } else {
            DeliveryDecision::RedeliverAfter(100 * 2u32.pow(attempt.min(10)))
        }
    }

    /// State to carry into the next version when the policy is swapped.
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }

    /// Takes the previous version's [`Policy::snapshot`] (called after `configure`).
    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let _ = state;
        Ok(())
    }
}

/// Reads a little-endian `u32` snapshot (empty: 0).
pub fn decode_u32(state: &[u8]) -> Result<u32, String> {
    match state {
        [] => Ok(0),
        [a, b, c, d] => Ok(u32::from_le_bytes([*a, *b, *c, *d])),
        other => Err(format!(
            "expected a 4-byte snapshot, got {} bytes",
            other.len()
        )),
    }
}

/// Tells the node the policy's state is now `state` (a breaker: `"closed"`, `"open"`,
/// `"half-open"`). The node counts each change into a state in its metrics
/// (`switchyard_policy_transitions_total`), shows the current one in `GET /policies` and logs
/// the change; call it when the state changes, not on every call. `state` is 1 to 32 bytes of
/// `a-z`, `0-9`, `-` and `_`, and a binding takes at most 8 distinct states: the node ignores
/// anything else, with a warning in its log.
pub fn report_state(state: &str) {
    crate::policy_bindings::switchyard::runtime::report::set_state(state);
}

/// Whether an outcome counts as a failure for breakers and retries: no answer, or a 5xx.
pub fn is_failure(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Replied(status) => *status >= 500,
        Outcome::Rejected(_) | Outcome::BadRequest(_) => false,
        Outcome::Timeout | Outcome::Unavailable(_) | Outcome::Remote(_) => true,
    }
}

/// Exports a type that implements [`Policy`] as the component's `policy`.
///
/// Use it once per crate: `switchyard_sdk::export_policy!(MyPolicy);`.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        const _: () = {
            type SwitchyardPolicyAdapter = $crate::__private::PolicyAdapter<$policy>;
            $crate::__private::export_policy_world!(
                SwitchyardPolicyAdapter with_types_in $crate::policy_bindings
            );
        };
    };
}

#[doc(hidden)]
pub mod adapter {
    use std::cell::RefCell;
    use std::marker::PhantomData;

    use super::{Config, Policy, wit};

    thread_local! {
        /// The one live policy value of this instance (wasm instances are single-threaded).
        static STATE: RefCell<Option<Box<dyn std::any::Any>>> = RefCell::new(None);
    }

    fn with<P: Policy, R>(fallback: R, f: impl FnOnce(&mut P) -> R) -> R {
        STATE.with(|state| {
            let mut state = state.borrow_mut();
            match state.as_mut().and_then(|s| s.downcast_mut::<P>()) {
                Some(policy) => f(policy),
                None => fallback,
            }
        })
    }

    /// Implements the generated export trait for any [`Policy`].
    pub struct PolicyAdapter<P>(PhantomData<P>);

    impl<P: Policy> wit::Guest for PolicyAdapter<P> {
        fn configure(config: Vec<(String, String)>) -> Result<(), String> {
            let policy = P::configure(&Config { entries: config })?;
            STATE.with(|state| *state.borrow_mut() = Some(Box::new(policy)));
            Ok(())
        }

        fn before_call(call: wit::CallInfo) -> wit::BeforeDecision {
            with::<P, _>(wit::BeforeDecision::Proceed, |p| p.before_call(&call))
        }

        fn after_call(
            call: wit::CallInfo,
            outcome: wit::Outcome,
            elapsed_us: u64,
        ) -> wit::AfterDecision {
            with::<P, _>(wit::AfterDecision::Done, |p| {
                p.after_call(&call, &outcome, elapsed_us)
            })
        }

        fn pick(call: wit::CallInfo, candidates: Vec<wit::Candidate>) -> Option<u32> {
            with::<P, _>(None, |p| p.pick(&call, &candidates))
        }

        fn on_delivery_failure(message: wit::Delivery, attempt: u32) -> wit::DeliveryDecision {
            with::<P, _>(
                wit::DeliveryDecision::DeadLetter("policy not configured".into()),
                |p| p.on_delivery_failure(&message, attempt),
            )
        }

        fn snapshot() -> Vec<u8> {
            with::<P, _>(Vec::new(), |p| p.snapshot())
        }

        fn restore(state: Vec<u8>) -> Result<(), String> {
            with::<P, _>(Err("policy not configured".into()), |p| p.restore(&state))
        }
    }
}
