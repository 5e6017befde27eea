//! Custom balancing: send calls to the instance on node `node` whenever it is a candidate
//! (e.g. the node in the caller's zone), otherwise to the one with the fewest calls in flight.
use switchyard_sdk::policy::{CallInfo, Candidate, Config, Policy};

struct PreferNode {
    node: String,
}

impl Policy for PreferNode {
    fn configure(config: &Config) -> Result<Self, String> {
        let node = config.get("node").ok_or("config `node` is required")?;
        Ok(PreferNode {
            node: node.to_owned(),
        })
    }

    fn pick(&mut self, _call: &CallInfo, candidates: &[Candidate]) -> Option<u32> {
        let preferred = candidates.iter().position(|c| c.node == self.node);
        let least_busy = || {
            candidates
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| c.in_flight)
                .map(|(index, _)| index)
        };
        preferred.or_else(least_busy).map(|index| index as u32)
    }
}

switchyard_sdk::export_policy!(PreferNode);
