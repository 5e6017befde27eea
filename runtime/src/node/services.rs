//! The services a node serves, as one set that a manifest edit replaces whole.
//!
//! Three things route to a service's [`Slot`]: the ingress router (HTTP), the rpc
//! [`Directory`](rpc::Directory) (calls from guests and peers) and the admin API's list. They
//! are built together from `(spec, slot)` pairs ([`Services::replace`]), so a route conflict in
//! an edited manifest changes none of them. A slot that stays keeps serving (and its
//! generations and counters); a removed one stops getting new requests and is freed when its
//! last in-flight request ends; an added one is compiled first, off the executor.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::host::Outbound;
use crate::http::{Ingress, ServiceList};
use crate::manifest::ServiceSpec;
use crate::router::Router;
use crate::rpc;
use crate::wasm::{Engine, LoadedComponent, Slot, SlotConfig};

/// The node's current services and what routes to them.
pub(super) struct Services {
    engine: Arc<Engine>,
    outbound: Outbound,
    ingress: Arc<Ingress>,
    directory: Arc<rpc::Directory>,
    listed: Arc<ServiceList>,
    /// Each running service by name, with the spec its routes and version came from.
    running: ArcSwap<HashMap<String, Running>>,
}

struct Running {
    spec: ServiceSpec,
    slot: Arc<Slot>,
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
    ) -> Result<Self, String> {
        let services = Self {
            engine,
            ingress: Arc::new(Ingress::new(Router::default())),
            directory: Arc::new(rpc::Directory::new(node)),
            listed: Arc::default(),
            running: ArcSwap::default(),
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

    /// The callees local calls reach, for the node's rpc client.
    pub(super) fn directory(&self) -> &Arc<rpc::Directory> {
        &self.directory
    }

    pub(super) fn ingress(&self) -> Arc<Ingress> {
        self.ingress.clone()
    }

    pub(super) fn listed(&self) -> Arc<ServiceList> {
        self.listed.clone()
    }

    pub(super) fn slot(&self, name: &str) -> Result<Arc<Slot>, String> {
        let running = self.running.load();
        running.get(name).map(|r| r.slot.clone()).ok_or_else(|| {
            let mut known: Vec<&str> = running.keys().map(String::as_str).collect();
            known.sort_unstable();
            format!(
                "this node runs no service `{name}` (it runs: {})",
                known.join(", ")
            )
        })
    }

    /// `(name, version)` of every service, for discovery.
    pub(super) fn announced(&self) -> Vec<(String, String)> {
        let mut announced: Vec<_> = self
            .running
            .load()
            .values()
            .map(|r| (r.spec.name.clone(), r.spec.version.to_string()))
            .collect();
        announced.sort();
        announced
    }

    /// Makes `specs` the services this node runs: new ones are compiled and started, removed
    /// ones stop taking requests, and every route is rebuilt. A service whose version changed
    /// keeps running as it was (peers resolved that version; a restart changes it). On any
    /// error nothing changes.
    pub(super) async fn replace(&self, specs: &[ServiceSpec]) -> Result<Replaced, String> {
        let current = self.running.load_full();
        let mut replaced = Replaced::default();
        let mut served = Vec::new();
        for spec in specs {
            match current.get(&spec.name) {
                Some(Running { spec: before, slot }) => {
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
                        return Err(format!(
                            "service `{}`: memory_limit_mb = {} is more than the {} MiB the \
                             instance pool was sized for at start; restart the node to add it",
                            spec.name,
                            spec.memory_limit_bytes / (1024 * 1024),
                            self.engine.max_memory_bytes() / (1024 * 1024)
                        ));
                    }
                    let engine = self.engine.clone();
                    let path = spec.component.clone();
                    let component = tokio::task::spawn_blocking(move || engine.load(&path))
                        .await
                        .map_err(|err| err.to_string())?
                        .map_err(|err| format!("service `{}`: {err}", spec.name))?;
                    replaced.added.push(spec.name.clone());
                    served.push((spec.clone(), self.new_slot(spec, component)));
                }
            }
        }
        replaced.removed = current
            .keys()
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

    /// Builds every table from `served` and swaps them in; a route conflict changes nothing.
    fn install(&self, served: Vec<(ServiceSpec, Arc<Slot>)>) -> Result<(), String> {
        let mut router = Router::default();
        let mut callees = HashMap::new();
        let mut listed = Vec::new();
        for (spec, slot) in &served {
            let mut own_routes = Router::default();
            for route in &spec.routes {
                for table in [&mut router, &mut own_routes] {
                    table
                        .add(&route.method, &route.pattern, &spec.name, slot.clone())
                        .map_err(|err| err.to_string())?;
                }
            }
            callees.insert(
                spec.name.clone(),
                rpc::Callee {
                    version: spec.version.clone(),
                    routes: own_routes,
                    slot: slot.clone(),
                },
            );
            listed.push((slot.clone(), routes(spec)));
        }
        self.ingress.replace_router(router);
        self.directory.replace(callees);
        self.listed.store(Arc::new(listed));
        self.running.store(Arc::new(
            served
                .into_iter()
                .map(|(spec, slot)| (spec.name.clone(), Running { spec, slot }))
                .collect(),
        ));
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
        config: spec.config.clone(),
        env: spec.env.clone(),
    }
}
