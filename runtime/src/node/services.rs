//! The services a node serves, as one set that a manifest edit replaces whole.
//!
//! Everything that reaches a service's [`Slot`] (the ingress router, calls from guests and
//! peers, the admin API's list, this file's bookkeeping) reads one [`rpc::ServiceTable`],
//! built from `(spec, slot)` pairs and swapped in with one store ([`Services::replace`]): a
//! route conflict in an edited manifest changes nothing, and no request sees half an edit. A slot that stays keeps serving (and its
//! generations and counters); a removed one stops getting new requests and is freed when its
//! last in-flight request ends; an added one is compiled first, off the executor.

use std::sync::Arc;

use crate::host::Outbound;
use crate::http::ControlError;
use crate::manifest::ServiceSpec;
use crate::router::RouteError;
use crate::wasm::{Directory, ServiceTable};
use crate::wasm::{Engine, LoadedComponent, Slot, SlotConfig};

/// The node's current services and what routes to them.
pub(super) struct Services {
    engine: Arc<Engine>,
    outbound: Outbound,
    directory: Arc<Directory>,
}

/// What [`Services::replace`] changed, for the reload report.
#[derive(Debug, Default)]
pub(super) struct Replaced {
    pub(super) added: Vec<String>,
    pub(super) removed: Vec<String>,
    pub(super) rerouted: Vec<String>,
    /// Services whose version changed: they keep running as they were.
    pub(super) version_changed: Vec<String>,
}

impl Replaced {
    pub(super) fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.rerouted.is_empty()
    }
}

impl Services {
    /// Starts serving `specs`, each with its loaded component.
    pub(super) fn start(
        engine: Arc<Engine>,
        outbound: Outbound,
        node: &str,
        specs: &[ServiceSpec],
        components: Vec<LoadedComponent>,
    ) -> Result<Self, RouteError> {
        let services = Self {
            engine,
            directory: Arc::new(Directory::new(node)),
            outbound,
        };
        let served = specs
            .iter()
            .zip(components)
            .map(|(spec, component)| (spec.clone(), services.new_slot(spec, component)))
            .collect();
        services.install(served)?;
        Ok(services)
    }

    /// The table every reader shares: the ingress, the rpc client, the admin API.
    pub(super) fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }

    pub(super) fn slot(&self, name: &str) -> Result<Arc<Slot>, ControlError> {
        let table = self.directory.guard();
        table
            .get(name)
            .map(|callee| callee.slot.clone())
            .ok_or_else(|| ControlError::UnknownService {
                name: name.to_owned(),
                known: table.names().join(", "),
            })
    }

    /// The `state_max_mb` (in bytes) of `service`, if it runs here.
    pub(super) fn state_limit(&self, service: &str) -> Option<u64> {
        self.directory
            .get(service)
            .map(|callee| callee.spec.state_max_bytes)
    }

    /// `(name, version)` of every service, for discovery.
    pub(super) fn announced(&self) -> Vec<(String, String)> {
        let mut announced: Vec<_> = self
            .directory
            .guard()
            .services
            .iter()
            .map(|callee| (callee.spec.name.clone(), callee.spec.version.to_string()))
            .collect();
        announced.sort();
        announced
    }

    /// Makes `specs` the services this node runs: new ones are compiled and started, removed
    /// ones stop taking requests, and every route is rebuilt. A service whose version changed
    /// keeps running as it was (peers resolved that version; a restart changes it). On any
    /// error nothing changes.
    pub(super) async fn replace(&self, specs: &[ServiceSpec]) -> Result<Replaced, ControlError> {
        let current = self.directory.table();
        let mut replaced = Replaced::default();
        let mut served = Vec::new();
        for spec in specs {
            match current
                .get(&spec.name)
                .map(|callee| (&callee.spec, &callee.slot))
            {
                Some((before, slot)) => {
                    if before.version != spec.version {
                        replaced.version_changed.push(format!(
                            "service `{}`: version {} -> {}",
                            spec.name, before.version, spec.version
                        ));
                        served.push((before.clone(), slot.clone()));
                        continue;
                    }
                    if routes(before) != routes(spec) {
                        replaced.rerouted.push(spec.name.clone());
                    }
                    served.push((spec.clone(), slot.clone()));
                }
                None => {
                    if spec.memory_limit_bytes > self.engine.max_memory_bytes() {
                        return Err(ControlError::MemoryAbovePool {
                            service: spec.name.clone(),
                            asked_mib: spec.memory_limit_bytes / (1024 * 1024),
                            pool_mib: self.engine.max_memory_bytes() / (1024 * 1024),
                        });
                    }
                    let engine = self.engine.clone();
                    let path = spec.component.clone();
                    let component = tokio::task::spawn_blocking(move || engine.load(&path))
                        .await?
                        .map_err(|cause| ControlError::Component {
                            service: spec.name.clone(),
                            cause,
                        })?;
                    replaced.added.push(spec.name.clone());
                    served.push((spec.clone(), self.new_slot(spec, component)));
                }
            }
        }
        replaced.removed = current
            .services
            .iter()
            .map(|callee| &callee.spec.name)
            .filter(|name| !specs.iter().any(|spec| &spec.name == *name))
            .cloned()
            .collect();
        replaced.removed.sort();
        if !replaced.is_empty() {
            self.install(served)?;
        }
        Ok(replaced)
    }

    fn new_slot(&self, spec: &ServiceSpec, component: LoadedComponent) -> Arc<Slot> {
        Arc::new(Slot::new(
            self.engine.clone(),
            slot_config(spec),
            component,
            self.outbound.clone(),
        ))
    }

    /// Builds the table of `served` and swaps it in; a route conflict changes nothing.
    fn install(&self, served: Vec<(ServiceSpec, Arc<Slot>)>) -> Result<(), RouteError> {
        let table = ServiceTable::build(served)?;
        self.directory.replace(table);
        Ok(())
    }
}

fn routes(spec: &ServiceSpec) -> Vec<String> {
    spec.routes.iter().map(ToString::to_string).collect()
}

pub(super) fn slot_config(spec: &ServiceSpec) -> SlotConfig {
    SlotConfig {
        service: spec.name.clone(),
        version: spec.version.clone(),
        max_instances: spec.max_instances,
        requests_per_instance: spec.requests_per_instance,
        timeout: spec.timeout,
        memory_limit_bytes: spec.memory_limit_bytes,
        max_pending_calls: spec.max_pending_calls,
        max_open_streams: spec.max_open_streams,
        state_max_bytes: spec.state_max_bytes,
        may_call: spec.may_call.clone(),
        accepts_from: spec.accepts_from.clone(),
        outbound: spec.outbound.clone(),
        config: spec.config.clone(),
        env: spec.env.clone(),
    }
}
