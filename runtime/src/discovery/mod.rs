//! Which node runs which service.
//!
//! A [`Registry`] is what this node currently believes about its peers; the request path
//! reads it on every remote call. A [`Membership`] backend keeps it current and keeps this
//! node registered with the others, chosen by `[node.discovery]` in the manifest:
//!
//! - **embedded** (the default, [`gossip`]): every [`GOSSIP_INTERVAL`] a node swaps what it
//!   knows with the seeds it has not heard from and a few peers it has heard of, chosen at
//!   random (push-pull; every peer in a small mesh). What a node says of
//!   itself is good for [`TTL`]; what it relays of others carries the time they have left, so
//!   news of a node spreads through the mesh but never outlives the node's own last word: a
//!   killed node drops out everywhere within `TTL + GOSSIP_INTERVAL` (2.5 s). A node that
//!   shuts down says goodbye to everyone it knows, who forget it at once.
//! - **etcd** ([`etcd`]): a node writes its entry under a lease it keeps alive, and watches
//!   the prefix; a killed node's lease runs out (etcd's TTL, at least 2 s), a shut-down node
//!   revokes it.

mod etcd;
mod gossip;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::watch;

pub(crate) use crate::wire::frame::Member;
pub(crate) use etcd::{Etcd, connector as etcd_connector};
pub(crate) use gossip::Gossip;

/// How often a node gossips.
pub(crate) const GOSSIP_INTERVAL: Duration = Duration::from_millis(500);
/// How long a node's word about itself counts.
pub(crate) const TTL: Duration = Duration::from_secs(2);
/// How long a goodbye may take before the node stops anyway.
pub(crate) const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);
/// Peers a registry holds at most: news of more is dropped (and said in the log), so a peer
/// that invents members cannot grow a node's memory without end.
pub(crate) const MAX_PEERS: usize = 1024;

pub(crate) use crate::util::BoxFuture;

/// Keeps a node registered and its [`Registry`] current.
pub(crate) trait Membership: Send + Sync {
    /// Runs until `stop` flips: announces this node and learns about the others.
    fn run(self: Arc<Self>, stop: watch::Receiver<bool>) -> BoxFuture<'static, ()>;
    /// Deregisters this node so no new call is sent to it; best effort, at most
    /// [`LEAVE_TIMEOUT`]. Called after `run` returned.
    fn leave(self: Arc<Self>) -> BoxFuture<'static, ()>;
    /// The backend's name for logs and the admin API.
    fn backend(&self) -> &'static str;
    /// Announces this node's new set of `(service, version)` (a manifest edit added or removed
    /// some) under a new incarnation, so peers replace what they knew of it.
    fn announce(&self, services: Vec<(String, String)>);
}

/// What this node knows about its peers.
#[derive(Default)]
pub(crate) struct Registry {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    peers: HashMap<SocketAddr, PeerEntry>,
    /// Incarnations that said goodbye, so a late rumour does not bring them back.
    departed: HashMap<SocketAddr, (u64, Instant)>,
    /// Members not taken in at [`MAX_PEERS`] since the last purge.
    turned_away: u64,
}

impl State {
    fn purge(&mut self, now: Instant) {
        self.peers.retain(|_, entry| entry.live(now));
        self.departed.retain(|_, (_, until)| *until > now);
    }
}

struct PeerEntry {
    node: String,
    incarnation: u64,
    services: Vec<(String, semver::Version)>,
    /// `None`: until a backend removes it (etcd watches).
    expires: Option<Instant>,
}

impl PeerEntry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|expires| expires > now)
    }

    /// The versions of `name` this peer runs that fit `range`.
    fn versions_of<'a>(
        &'a self,
        name: &'a str,
        range: Option<&'a semver::VersionReq>,
    ) -> impl Iterator<Item = &'a semver::Version> {
        self.services
            .iter()
            .filter(move |(service, version)| {
                service == name && range.is_none_or(|range| range.matches(version))
            })
            .map(|(_, version)| version)
    }
}

/// One peer as the admin API shows it.
#[derive(Debug, serde::Serialize)]
pub(crate) struct PeerView {
    pub(crate) address: SocketAddr,
    pub(crate) node: String,
    pub(crate) services: Vec<String>,
    /// `null` for entries a backend removes itself (etcd).
    pub(crate) expires_in_ms: Option<u64>,
}

impl Registry {
    /// Takes in news about `member`, good for `ttl` (`None`: until removed). Older
    /// incarnations, departed ones and news older than what is known are ignored.
    pub(crate) fn learn(&self, member: &Member, ttl: Option<Duration>) {
        let now = Instant::now();
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if let Some((gone, _)) = state.departed.get(&member.address)
            && *gone >= member.incarnation
        {
            return;
        }
        let expires = ttl.map(|ttl| now + ttl);
        if let Some(known) = state.peers.get_mut(&member.address)
            && known.live(now)
        {
            if known.incarnation > member.incarnation {
                return;
            }
            if known.incarnation == member.incarnation {
                known.expires = match (known.expires, expires) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
                return;
            }
        }
        if !state.peers.contains_key(&member.address) && state.peers.len() >= MAX_PEERS {
            state.purge(now);
            if state.peers.len() >= MAX_PEERS {
                state.turned_away += 1;
                return;
            }
        }
        let services = member
            .services
            .iter()
            .filter_map(|(name, version)| {
                Some((name.clone(), semver::Version::parse(version).ok()?))
            })
            .collect();
        state.peers.insert(
            member.address,
            PeerEntry {
                node: member.node.clone(),
                incarnation: member.incarnation,
                services,
                expires,
            },
        );
    }

    /// Drops every entry whose time is up (they count no more, but they took room), and
    /// says how many members were turned away at [`MAX_PEERS`] since the last purge.
    pub(crate) fn purge(&self) {
        let now = Instant::now();
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.purge(now);
        if state.turned_away > 0 {
            tracing::warn!(
                turned_away = state.turned_away,
                max_peers = MAX_PEERS,
                "news of more peers than a registry holds was dropped"
            );
            state.turned_away = 0;
        }
    }

    /// How many entries are held, live or not yet purged.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.state.lock().map_or(0, |state| state.peers.len())
    }

    /// Forgets `incarnation` of the node at `address` (a goodbye, a deleted etcd key).
    pub(crate) fn forget(&self, address: SocketAddr, incarnation: u64) {
        let now = Instant::now();
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state
            .peers
            .get(&address)
            .is_some_and(|known| known.incarnation <= incarnation)
        {
            state.peers.remove(&address);
        }
        state.departed.insert(address, (incarnation, now + TTL * 2));
        state.departed.retain(|_, (_, until)| *until > now);
    }

    /// Live members with the time they have left, for relaying.
    pub(crate) fn members(&self) -> Vec<Member> {
        let now = Instant::now();
        let Ok(state) = self.state.lock() else {
            return Vec::new();
        };
        state
            .peers
            .iter()
            .filter(|(_, entry)| entry.live(now))
            .map(|(address, entry)| Member {
                node: entry.node.clone(),
                address: *address,
                incarnation: entry.incarnation,
                services: entry
                    .services
                    .iter()
                    .map(|(name, version)| (name.clone(), version.to_string()))
                    .collect(),
                ttl_ms: entry.expires.map_or(TTL.as_millis() as u32, |expires| {
                    expires.saturating_duration_since(now).as_millis() as u32
                }),
            })
            .collect()
    }

    /// Live peers that run `name` at a version in `range`, in address order.
    pub(crate) fn candidates(
        &self,
        name: &str,
        range: Option<&semver::VersionReq>,
    ) -> Vec<SocketAddr> {
        // Every remote call asks this: addresses only, no node names or versions to clone.
        let now = Instant::now();
        let Ok(state) = self.state.lock() else {
            return Vec::new();
        };
        let mut found: Vec<SocketAddr> = state
            .peers
            .iter()
            .filter(|(_, entry)| entry.live(now) && entry.versions_of(name, range).next().is_some())
            .map(|(addr, _)| *addr)
            .collect();
        found.sort_unstable();
        found
    }

    /// Like [`Registry::candidates`], with each peer's node name and the version it runs.
    pub(crate) fn instances(
        &self,
        name: &str,
        range: Option<&semver::VersionReq>,
    ) -> Vec<(SocketAddr, String, semver::Version)> {
        let now = Instant::now();
        let Ok(state) = self.state.lock() else {
            return Vec::new();
        };
        let mut found: Vec<_> = state
            .peers
            .iter()
            .filter(|(_, entry)| entry.live(now))
            .flat_map(|(addr, entry)| {
                entry
                    .versions_of(name, range)
                    .map(|version| (*addr, entry.node.clone(), version.clone()))
            })
            .collect();
        found.sort_by_key(|(addr, _, _)| *addr);
        found
    }

    pub(crate) fn view(&self) -> Vec<PeerView> {
        let now = Instant::now();
        let Ok(state) = self.state.lock() else {
            return Vec::new();
        };
        let mut view: Vec<PeerView> = state
            .peers
            .iter()
            .filter(|(_, entry)| entry.live(now))
            .map(|(address, entry)| PeerView {
                address: *address,
                node: entry.node.clone(),
                services: entry
                    .services
                    .iter()
                    .map(|(name, version)| format!("{name}@{version}"))
                    .collect(),
                expires_in_ms: entry
                    .expires
                    .map(|expires| expires.saturating_duration_since(now).as_millis() as u64),
            })
            .collect();
        view.sort_by_key(|peer| peer.address);
        view
    }
}

/// A number that differs between two starts of the same node.
/// `member` with `services`, under an incarnation newer than its current one.
pub(crate) fn reincarnate(member: &mut Member, services: Vec<(String, String)>) {
    member.services = services;
    member.incarnation = new_incarnation().max(member.incarnation + 1);
}

pub(crate) fn new_incarnation() -> u64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // Microseconds keep it increasing across restarts; the random low bits break ties.
    (since_epoch.as_micros() as u64) << 8 | u64::from(fastrand::u8(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_registry_holds_at_most_max_peers_and_expired_ones_make_room() {
        let registry = Registry::default();
        let numbered = |n: usize| Member {
            node: format!("n{n}"),
            address: SocketAddr::from(([10, 0, (n / 250) as u8, (n % 250) as u8], 7000)),
            incarnation: 1,
            services: Vec::new(),
            ttl_ms: 0,
        };
        for n in 0..MAX_PEERS + 100 {
            registry.learn(&numbered(n), Some(TTL));
        }
        assert_eq!(registry.held(), MAX_PEERS);
        assert_eq!(registry.members().len(), MAX_PEERS);
        // Known members are still renewed at the cap.
        registry.learn(&numbered(0), Some(TTL * 3));
        tokio::time::advance(TTL).await;
        assert_eq!(registry.members().len(), 1);
        // Once the others expired, new ones fit again.
        registry.learn(&numbered(MAX_PEERS + 500), Some(TTL));
        assert_eq!(registry.held(), 2);
    }

    fn member(incarnation: u64, ttl_ms: u32) -> Member {
        Member {
            node: "b".into(),
            address: SocketAddr::from(([127, 0, 0, 2], 7000)),
            incarnation,
            services: vec![("hello".into(), "1.2.0".into())],
            ttl_ms,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn news_expires_unless_renewed_and_a_goodbye_beats_late_rumours() {
        let registry = Registry::default();
        let b = member(5, 0);
        registry.learn(&b, Some(Duration::from_millis(40)));
        assert_eq!(registry.candidates("hello", None), vec![b.address]);
        tokio::time::advance(Duration::from_millis(39)).await;
        assert_eq!(registry.candidates("hello", None), vec![b.address]);
        // Renewed news extends it; older news never shortens it.
        registry.learn(&b, Some(Duration::from_millis(40)));
        registry.learn(&b, Some(Duration::from_millis(5)));
        tokio::time::advance(Duration::from_millis(39)).await;
        assert_eq!(
            registry.candidates("hello", None),
            vec![b.address],
            "renewal lost"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(registry.candidates("hello", None).is_empty(), "not expired");

        registry.learn(&b, Some(TTL));
        registry.forget(b.address, 5);
        assert!(
            registry.candidates("hello", None).is_empty(),
            "goodbye ignored"
        );
        registry.learn(&b, Some(TTL));
        assert!(
            registry.candidates("hello", None).is_empty(),
            "a rumour revived a departed node"
        );
        // A goodbye is remembered for twice the TTL, which outlives any rumour of it.
        tokio::time::advance(TTL * 2 - Duration::from_millis(1)).await;
        registry.learn(&b, Some(TTL));
        assert!(registry.candidates("hello", None).is_empty());
        // The same node restarted: a newer incarnation is welcome.
        registry.learn(&member(6, 0), Some(TTL));
        assert_eq!(registry.candidates("hello", None), vec![b.address]);
        // An older incarnation's news does not replace it.
        registry.learn(&member(4, 0), Some(TTL));
        assert_eq!(registry.members()[0].incarnation, 6);
        // Expired entries are purged, not just hidden.
        tokio::time::advance(TTL).await;
        assert_eq!(registry.held(), 1);
        registry.purge();
        assert_eq!(registry.held(), 0);
        assert!(
            registry
                .candidates(
                    "hello",
                    Some(&semver::VersionReq::parse("^2").unwrap_or_default())
                )
                .is_empty()
        );
    }
}
