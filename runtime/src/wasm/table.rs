//! The services this node runs, as one table: every reader of it, the HTTP ingress, calls
//! from guests and peers, the admin API's list and the node's own bookkeeping, loads the same
//! snapshot, and a manifest edit replaces it whole with one atomic store.
//!
//! It lives here, with the slots it holds, because both `http` and `rpc` read it and neither
//! may use the other; the node builds it and swaps it in. A request routed
//! with one snapshot never meets a callee, listing or route of another; a call keeps the
//! callee it looked up until it ends.

use std::collections::HashMap;
use std::sync::Arc;

use super::Slot;
use crate::manifest::ServiceSpec;
use crate::router::{RouteError, Router};

/// This node's services and what routes to them ([`Directory::replace`] swaps it).
pub(crate) struct Directory {
    node: String,
    table: arc_swap::ArcSwap<ServiceTable>,
}

/// One snapshot of the node's services.
#[derive(Default)]
pub(crate) struct ServiceTable {
    /// Every service's routes together: what HTTP requests are routed by.
    pub(crate) router: Router<Arc<Slot>>,
    /// Each service, in the manifest's order.
    pub(crate) services: Vec<Arc<Callee>>,
    /// Index into `services`, by name.
    by_name: HashMap<String, usize>,
}

/// One service of this node.
pub(crate) struct Callee {
    /// The `[[service]]` it runs as (routes, version).
    pub(crate) spec: ServiceSpec,
    /// Its own routes: a call's method resolves against these only.
    pub(crate) routes: Router<Arc<Slot>>,
    /// Serves its requests, calls and streams.
    pub(crate) slot: Arc<Slot>,
}

impl ServiceTable {
    /// The table of `served`, in that order; a route two services claim is refused.
    pub(crate) fn build(served: Vec<(ServiceSpec, Arc<Slot>)>) -> Result<Self, RouteError> {
        let mut table = Self::default();
        for (spec, slot) in served {
            let mut routes = Router::default();
            for route in &spec.routes {
                for router in [&mut table.router, &mut routes] {
                    router.add(&route.method, &route.pattern, &spec.name, slot.clone())?;
                }
            }
            table
                .by_name
                .insert(spec.name.clone(), table.services.len());
            table.services.push(Arc::new(Callee { spec, routes, slot }));
        }
        Ok(table)
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Arc<Callee>> {
        self.by_name.get(name).and_then(|&i| self.services.get(i))
    }

    /// The names it serves, sorted (for messages that list them).
    pub(crate) fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

impl Directory {
    pub(crate) fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            table: arc_swap::ArcSwap::default(),
        }
    }

    /// The current snapshot.
    pub(crate) fn table(&self) -> Arc<ServiceTable> {
        self.table.load_full()
    }

    /// The current snapshot, without touching its reference count (the request path).
    pub(crate) fn guard(&self) -> arc_swap::Guard<Arc<ServiceTable>> {
        self.table.load()
    }

    /// Makes `table` what every new request, call and listing sees.
    pub(crate) fn replace(&self, table: ServiceTable) {
        self.table.store(Arc::new(table));
    }

    /// The node these services run on.
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<Callee>> {
        self.table.load().get(name).cloned()
    }
}
