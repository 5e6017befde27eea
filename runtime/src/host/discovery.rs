//! `switchyard:runtime/discovery`: what the node's rpc client would call, as data.

use super::HostState;
use crate::wasm::imports::discovery::{self as wit, Instance};

impl wit::Host for HostState {
    fn resolve(&mut self, service: String) -> Result<Vec<Instance>, String> {
        self.guest
            .rpc
            .resolve(&service)
            .map(|instances| {
                instances
                    .into_iter()
                    .map(|instance| Instance {
                        node: instance.node,
                        local: instance.address.is_none(),
                        address: instance.address.map(|addr| addr.to_string()),
                        version: instance.version,
                    })
                    .collect()
            })
            .map_err(|err| err.to_string())
    }
}
