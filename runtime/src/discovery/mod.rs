//! Which node runs which service.
//!
//! Embedded backend: every node asks each of its seeds (`[node] seeds`) for the services it
//! runs every [`PULL_INTERVAL`]; an answer renews that peer's entries for [`TTL`]. A node that
//! stops answering (killed, partitioned, shut down) drops out within `TTL + PULL_INTERVAL`
//! (2.5 s), and only peers that answered recently get traffic.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::transport::Transport;
use crate::transport::frame::Frame;

/// How often each seed is asked.
pub(crate) const PULL_INTERVAL: Duration = Duration::from_millis(500);
/// How long an answer counts.
pub(crate) const TTL: Duration = Duration::from_secs(2);

/// What this node knows about its peers.
#[derive(Default)]
pub(crate) struct Registry {
    peers: Mutex<HashMap<SocketAddr, PeerEntry>>,
}

struct PeerEntry {
    node: String,
    services: Vec<(String, semver::Version)>,
    expires: Instant,
}

/// One peer as the admin API shows it.
#[derive(Debug, serde::Serialize)]
pub(crate) struct PeerView {
    pub(crate) address: SocketAddr,
    pub(crate) node: String,
    pub(crate) services: Vec<String>,
    pub(crate) expires_in_ms: u64,
}

impl Registry {
    pub(crate) fn renew(&self, peer: SocketAddr, node: String, services: Vec<(String, String)>) {
        let services = services
            .into_iter()
            .filter_map(|(name, version)| Some((name, semver::Version::parse(&version).ok()?)))
            .collect();
        if let Ok(mut peers) = self.peers.lock() {
            peers.insert(
                peer,
                PeerEntry {
                    node,
                    services,
                    expires: Instant::now() + TTL,
                },
            );
        }
    }

    /// Live peers that run `name` at a version in `range`, in address order.
    pub(crate) fn candidates(
        &self,
        name: &str,
        range: Option<&semver::VersionReq>,
    ) -> Vec<SocketAddr> {
        self.instances(name, range)
            .into_iter()
            .map(|(addr, _, _)| addr)
            .collect()
    }

    /// Like [`Registry::candidates`], with each peer's node name and the version it runs.
    pub(crate) fn instances(
        &self,
        name: &str,
        range: Option<&semver::VersionReq>,
    ) -> Vec<(SocketAddr, String, semver::Version)> {
        let now = Instant::now();
        let Ok(peers) = self.peers.lock() else {
            return Vec::new();
        };
        let mut found: Vec<_> = peers
            .iter()
            .filter(|(_, entry)| entry.expires > now)
            .flat_map(|(addr, entry)| {
                entry
                    .services
                    .iter()
                    .filter(|(service, version)| {
                        service == name && range.is_none_or(|range| range.matches(version))
                    })
                    .map(|(_, version)| (*addr, entry.node.clone(), version.clone()))
            })
            .collect();
        found.sort_by_key(|(addr, _, _)| *addr);
        found
    }

    pub(crate) fn view(&self) -> Vec<PeerView> {
        let now = Instant::now();
        let Ok(peers) = self.peers.lock() else {
            return Vec::new();
        };
        let mut view: Vec<PeerView> = peers
            .iter()
            .filter(|(_, entry)| entry.expires > now)
            .map(|(address, entry)| PeerView {
                address: *address,
                node: entry.node.clone(),
                services: entry
                    .services
                    .iter()
                    .map(|(name, version)| format!("{name}@{version}"))
                    .collect(),
                expires_in_ms: entry.expires.saturating_duration_since(now).as_millis() as u64,
            })
            .collect();
        view.sort_by_key(|peer| peer.address);
        view
    }
}

/// Asks every seed for its services until `shutdown` flips.
pub(crate) async fn pull_from_seeds(
    registry: Arc<Registry>,
    transport: Arc<Transport>,
    seeds: Vec<SocketAddr>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(PULL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let asks = seeds.iter().map(|seed| {
            let transport = transport.clone();
            let registry = registry.clone();
            let seed = *seed;
            async move {
                match transport
                    .request(seed, &Frame::RegistryRequest, TTL / 2)
                    .await
                {
                    Ok(Frame::Registry { node, services }) => registry.renew(seed, node, services),
                    Ok(other) => {
                        tracing::warn!(%seed, ?other, "seed answered a registry request oddly")
                    }
                    Err(error) => tracing::debug!(%seed, %error, "seed did not answer"),
                }
            }
        });
        let tasks: Vec<_> = asks.map(tokio::spawn).collect();
        for task in tasks {
            let _ = task.await;
        }
    }
}
