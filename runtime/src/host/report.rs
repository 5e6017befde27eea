//! `switchyard:runtime/report`: a policy tells the node its state (a breaker's `open`).
//!
//! The store keeps the last state reported during a decision; the binding takes it after the
//! decision and counts the change, so the host function itself does nothing but check it.

use super::PolicyState;
use super::policy_bindings::switchyard::runtime::report;

/// The longest state name a policy may report.
pub(crate) const MAX_STATE_BYTES: usize = 32;

impl report::Host for PolicyState {
    fn set_state(&mut self, state: String) {
        match check(&state) {
            Ok(()) => self.reported_state = Some(state),
            Err(why) => tracing::warn!(
                target: "guest",
                policy = %self.name,
                state = %state.escape_debug(),
                "report.set-state ignored: {why}"
            ),
        }
    }
}

/// Whether `state` may become a metric label value.
fn check(state: &str) -> Result<(), String> {
    if state.is_empty() || state.len() > MAX_STATE_BYTES {
        return Err(format!(
            "a state is 1 to {MAX_STATE_BYTES} bytes, this one has {}",
            state.len()
        ));
    }
    if let Some(c) = state
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "{c:?} is not allowed in a state; use a-z, 0-9, - and _"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn only_short_plain_states_pass() {
        for good in ["open", "half-open", "closed", "level_3"] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
        for bad in ["", "Open", "a b", "x\"}", &"a".repeat(33)] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }
}
