//! The one way a running node is changed: the admin API (through [`http::Operator`]) and the
//! manifest watcher ([`super::reload`]) both call [`Control`], and get typed outcomes and a
//! typed [`ControlError`] back. Each operation changes everything it touches or nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::services::{self, Services};
use crate::http::{self, ControlError, PolicySwapped, Upload};
use crate::manifest::{BalanceSpec, Manifest, PoolPlan};
use crate::messaging::{self, QueueChanges, QueueView};
use crate::policy::{BindingView, Policies, Rebound};
use crate::rpc;
use crate::util::BoxFuture;
use crate::wasm::{Engine, SlotConfig, SwapEvent};

/// What the admin API and manifest reloads may change on this node. It owns the services
/// (and so every slot); the node holds it, so they go when the node and its servers do.
pub(super) struct Control {
    pub(super) engine: Arc<Engine>,
    /// Makes this node's outgoing calls (its balancing settings change with the manifest).
    pub(super) rpc: rpc::Client,
    pub(super) policies: Arc<Policies>,
    pub(super) services: Arc<Services>,
    pub(super) broker: Arc<messaging::Broker>,
    pub(super) state: Arc<crate::state::Store>,
    pub(super) relay: Arc<crate::state::RelayStats>,
    /// Where changes to the set of services are announced (nodes with QUIC).
    pub(super) membership: std::sync::OnceLock<Arc<dyn crate::discovery::Membership>>,
    /// Components swapped in through the admin API, by `service:<name>` or `policy:<name>`:
    /// their SHA-256. A manifest edit keeps them (new settings apply to the swapped code);
    /// an edit of that `component` replaces them, and its reload report says so.
    pub(super) admin_swaps: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

/// The key of [`Control::admin_swaps`].
pub(super) fn swap_key(kind: &str, name: &str) -> String {
    format!("{kind}:{name}")
}

impl Control {
    /// The SHA-256 of the component the admin API swapped in for `key` ([`swap_key`]), which
    /// the manifest's component is about to replace; forgotten here.
    pub(super) fn replaces_admin_swap(&self, key: &str) -> Option<String> {
        self.admin_swaps.lock().ok()?.remove(key)
    }

    fn remember_admin_swap(&self, key: String, sha256: String) {
        if let Ok(mut swaps) = self.admin_swaps.lock() {
            swaps.insert(key, sha256);
        }
    }

    /// Makes `balance` the `[balance.*]` settings of calls from now on.
    pub(super) fn rebalance(&self, balance: &BTreeMap<String, BalanceSpec>) {
        self.rpc.rebalance(balance.clone());
    }

    /// Makes `manifest`'s `[[queue]]` and `[[topic]]` entries the node's.
    pub(super) async fn requeue(&self, manifest: &Manifest) -> Result<QueueChanges, ControlError> {
        let changes = self
            .broker
            .apply(&manifest.queues, &manifest.topics)
            .await?;
        if !changes.is_empty() {
            self.announce();
        }
        Ok(changes)
    }

    /// Gives every binding of policy `name` the new config; returns how many there are.
    pub(super) async fn reconfigure_policy(
        &self,
        name: &str,
        config: &BTreeMap<String, String>,
    ) -> Result<usize, ControlError> {
        match self.policies.reconfigure(name, config).await {
            Ok(generations) => Ok(generations.len()),
            Err(err) => {
                tracing::error!(policy = %name, error = %err, "policy config refused; the old config stays");
                Err(err.into())
            }
        }
    }

    /// Swaps every binding of policy `name` to the component `bytes`, moving their state.
    pub(super) async fn swap_policy(
        &self,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<PolicySwapped, ControlError> {
        let started = std::time::Instant::now();
        match self.policies.swap(&self.engine, name, bytes).await {
            Ok(generations) => Ok(PolicySwapped {
                policy: name.to_owned(),
                bindings: generations.len(),
                generations,
                swap_us: started.elapsed().as_micros() as u64,
            }),
            Err(err) => {
                tracing::error!(policy = %name, error = %err, "policy swap refused; the old version keeps running");
                Err(err.into())
            }
        }
    }

    /// A new generation of service `name`: new code, new settings (from the manifest's
    /// `[[service]]`), or both.
    pub(super) async fn update_service(
        &self,
        name: &str,
        component: Option<Vec<u8>>,
        settings: Option<SlotConfig>,
    ) -> Result<SwapEvent, ControlError> {
        let slot = self.services.slot(name)?;
        let loaded = match component {
            Some(component) => {
                let engine = slot.engine().clone();
                let label = std::path::PathBuf::from(format!("<upload for service {name}>"));
                let loaded =
                    tokio::task::spawn_blocking(move || engine.load_bytes(&label, &component))
                        .await?
                        .map_err(|cause| ControlError::Component {
                            service: name.to_owned(),
                            cause,
                        })?;
                Some(loaded)
            }
            None => None,
        };
        Ok(slot.next_generation(loaded, settings).await?)
    }

    /// Makes `manifest`'s `[[service]]` list the services this node runs: added ones start,
    /// removed ones stop taking requests, routes are rebuilt; peers are told of a new set.
    pub(super) async fn reroute(
        &self,
        manifest: &Manifest,
    ) -> Result<services::Replaced, ControlError> {
        let replaced = self.services.replace(&manifest.services).await?;
        if !(replaced.added.is_empty() && replaced.removed.is_empty()) {
            self.announce();
        }
        Ok(replaced)
    }

    /// Tells peers this node's services and queues as they are now.
    fn announce(&self) {
        if let Some(membership) = self.membership.get() {
            membership.announce(self.services.announced(), self.broker.names());
        }
    }

    /// Makes `manifest`'s `[[policy]]` and `[[bind]]` entries the ones that run.
    pub(super) async fn rebind(&self, manifest: &Manifest) -> Result<Rebound, ControlError> {
        let needed = PoolPlan::policy_instances_needed(manifest);
        let sized = self.engine.pool().policy_instances;
        if needed > sized {
            return Err(ControlError::PoolTooSmall { needed, sized });
        }
        self.policies
            .rebind(&self.engine, manifest)
            .await
            .map_err(|err| {
                tracing::error!(error = %err, "[[bind]] changes refused; the old bindings stay");
                err.into()
            })
    }
}

impl http::Operator for Control {
    fn policies(&self) -> BoxFuture<'_, Vec<BindingView>> {
        Box::pin(self.policies.views())
    }

    fn queues(&self) -> Vec<QueueView> {
        self.broker.views()
    }

    fn problems(&self) -> Vec<String> {
        self.broker.problems()
    }

    fn topics(&self) -> Vec<crate::messaging::TopicView> {
        self.broker.topic_views()
    }

    fn replay(
        &self,
        topic: String,
        subscriber: String,
        from: crate::manifest::StartAt,
    ) -> BoxFuture<'_, Result<u64, ControlError>> {
        Box::pin(async move { Ok(self.broker.rewind(&topic, &subscriber, from).await?) })
    }

    fn state(&self) -> BoxFuture<'_, Result<crate::state::StateView, ControlError>> {
        Box::pin(async move {
            let (store, relay, services) = (
                self.state.clone(),
                self.relay.clone(),
                self.services.clone(),
            );
            tokio::task::spawn_blocking(move || {
                crate::state::view(&store, &relay, |service| services.state_limit(service))
            })
            .await?
            .map_err(ControlError::from)
        })
    }

    fn export_state(
        &self,
        service: String,
    ) -> BoxFuture<'_, Result<Vec<crate::host::StateEntry>, ControlError>> {
        Box::pin(async move {
            let store = self.state.clone();
            tokio::task::spawn_blocking(move || store.export(&service))
                .await?
                .map_err(ControlError::from)
        })
    }

    fn import_state(
        &self,
        service: String,
        entries: Vec<(String, Vec<u8>)>,
    ) -> BoxFuture<'_, Result<usize, ControlError>> {
        Box::pin(async move {
            let Some(max_bytes) = self.services.state_limit(&service) else {
                return Err(ControlError::UnknownService {
                    known: self
                        .services
                        .announced()
                        .into_iter()
                        .map(|(name, _)| name)
                        .collect::<Vec<_>>()
                        .join(", "),
                    name: service,
                });
            };
            let store = self.state.clone();
            tokio::task::spawn_blocking(move || store.import(&service, max_bytes, entries))
                .await?
                .map_err(ControlError::from)
        })
    }

    fn redrive(&self, queue: String) -> BoxFuture<'_, Result<usize, ControlError>> {
        Box::pin(async move { Ok(self.broker.redrive(&queue).await?) })
    }

    fn swap_policy(
        &self,
        name: String,
        component: Upload,
    ) -> BoxFuture<'_, Result<PolicySwapped, ControlError>> {
        Box::pin(async move {
            let swapped = Control::swap_policy(self, &name, component.bytes).await?;
            self.remember_admin_swap(swap_key("policy", &name), component.sha256);
            Ok(swapped)
        })
    }

    fn swap_service(
        &self,
        name: String,
        component: Upload,
    ) -> BoxFuture<'_, Result<SwapEvent, ControlError>> {
        Box::pin(async move {
            let event = self
                .update_service(&name, Some(component.bytes), None)
                .await?;
            self.remember_admin_swap(swap_key("service", &name), component.sha256);
            Ok(event)
        })
    }
}
