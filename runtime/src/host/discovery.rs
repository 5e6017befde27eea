//! `switchyard:runtime/discovery`: what the node's calls would reach, as data.

use super::HostState;
use super::bindings::imports::discovery::{self as wit, Instance};
use crate::call::{self, Target};

impl wit::Host for HostState {
    fn resolve(&mut self, service: String) -> Result<Vec<Instance>, String> {
        let target = Target::parse(&service).map_err(|err| err.to_string())?;
        Ok(self
            .guest
            .calls
            .resolve(&target)
            .into_iter()
            .map(Instance::from)
            .collect())
    }
}

impl From<call::Instance> for Instance {
    fn from(instance: call::Instance) -> Self {
        Self {
            node: instance.node,
            local: instance.endpoint.peer().is_none(),
            address: instance.endpoint.peer().map(|addr| addr.to_string()),
            version: instance.version,
        }
    }
}
