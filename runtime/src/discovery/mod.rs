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

use crate::transport::NodeCert;
use crate::wire::frame::MEMBER_PURPOSE;
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
    /// Announces this node's new set of `(service, version)` and of queues (a manifest edit
    /// added or removed some) under a new incarnation, so peers replace what they knew of it.
    fn announce(&self, services: Vec<(String, String)>, queues: Vec<String>);
}

/// What this node knows about its peers, one entry per node name.
#[derive(Default)]
pub(crate) struct Registry {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    peers: HashMap<String, PeerEntry>,
    /// Incarnations that said goodbye, so a late rumour does not bring them back.
    departed: HashMap<String, (u64, Instant)>,
    /// Members not taken in at [`MAX_PEERS`] since the last purge.
    turned_away: u64,
    /// Members not taken in since the last purge because another live node holds their
    /// address.
    contested: u64,
}

impl State {
    /// Whether `member`'s incarnation (or a later one) said goodbye lately.
    fn departed(&self, member: &Member) -> bool {
        self.departed
            .get(&member.node)
            .is_some_and(|(gone, _)| *gone >= member.incarnation)
    }

    fn purge(&mut self, now: Instant) {
        self.peers.retain(|_, entry| entry.live(now));
        self.departed.retain(|_, (_, until)| *until > now);
    }
}

struct PeerEntry {
    /// The node's record as it signed it (its `ttl_ms` is stale; `expires` counts).
    record: Member,
    services: Vec<(String, semver::Version)>,
    /// When this node first heard the record's beat: relays of the same beat extend its life
    /// to at most [`TTL`] after that.
    heard_at: Instant,
    /// `None`: until a backend removes it (etcd watches).
    expires: Option<Instant>,
}

impl PeerEntry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|expires| expires > now)
    }

    /// Where the record stands in its node's history: newer incarnations, then newer beats.
    fn version(&self) -> (u64, u64) {
        (self.record.incarnation, self.record.beat)
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
    /// The queues it declares.
    pub(crate) queues: Vec<String>,
    /// `null` for entries a backend removes itself (etcd).
    pub(crate) expires_in_ms: Option<u64>,
}

/// Why a peer's record about a node was not believed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    /// The signature or its certificate does not hold.
    #[error("record of node `{node}` refused: {cause}")]
    Unproven {
        node: String,
        cause: crate::transport::TransportError,
    },
    /// The record is signed, by another node than the one it is about.
    #[error(
        "record of node `{node}` refused: node `{signer}` signed it; a node speaks only for itself"
    )]
    NotItsOwn { node: String, signer: String },
}

/// `me` signed anew, one beat later: what peers believe and relay of this node.
pub(crate) fn sign(
    me: &mut Member,
    cert: &NodeCert,
) -> Result<(), crate::transport::TransportError> {
    me.beat += 1;
    let words = me
        .signed_words()
        .map_err(|err| crate::transport::TransportError::Frame(err.to_string()))?;
    me.proof = cert.sign(MEMBER_PURPOSE, &words)?;
    Ok(())
}

/// That `node` signed `words` for `purpose`, with `proof`.
pub(crate) fn check_signed(
    cert: &NodeCert,
    node: &str,
    purpose: &str,
    words: Result<Vec<u8>, crate::wire::frame::FrameError>,
    proof: &crate::wire::frame::Proof,
) -> Result<(), RecordError> {
    let unproven = |cause| RecordError::Unproven {
        node: node.to_owned(),
        cause,
    };
    let words =
        words.map_err(|err| unproven(crate::transport::TransportError::Frame(err.to_string())))?;
    let signer = cert.check(purpose, &words, proof).map_err(unproven)?;
    if signer != node {
        return Err(RecordError::NotItsOwn {
            node: node.to_owned(),
            signer,
        });
    }
    Ok(())
}

impl Registry {
    /// Takes in `member` as a peer (or etcd) passed it on, good for `ttl`, if it is news and
    /// its node signed it. Only news costs a signature check: what is not newer than what is
    /// known cannot change an entry beyond extending its life within the cap.
    pub(crate) fn learn_signed(
        &self,
        member: &Member,
        ttl: Option<Duration>,
        cert: &NodeCert,
    ) -> Result<(), RecordError> {
        if self.is_news(member) {
            check_signed(
                cert,
                &member.node,
                MEMBER_PURPOSE,
                member.signed_words(),
                &member.proof,
            )?;
        }
        self.learn(member, ttl);
        Ok(())
    }

    /// Whether `member` is newer than what is known of its node (and not departed).
    fn is_news(&self, member: &Member) -> bool {
        let now = Instant::now();
        let Ok(state) = self.state.lock() else {
            return false;
        };
        if state.departed(member) {
            return false;
        }
        state.peers.get(&member.node).is_none_or(|known| {
            !known.live(now) || (member.incarnation, member.beat) > known.version()
        })
    }

    /// Takes in news about `member`, good for `ttl` (`None`: until removed), as it is: the
    /// caller checked the signature. Older incarnations and beats, departed incarnations,
    /// and a claim on an address another live node holds are ignored; the same beat again
    /// extends its life, to at most [`TTL`] after it was first heard.
    pub(crate) fn learn(&self, member: &Member, ttl: Option<Duration>) {
        let now = Instant::now();
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.departed(member) {
            return;
        }
        let expires = ttl.map(|ttl| now + ttl);
        let version = (member.incarnation, member.beat);
        if let Some(known) = state.peers.get_mut(&member.node)
            && known.live(now)
        {
            if known.version() > version {
                return;
            }
            if known.version() == version {
                known.expires = match (known.expires, expires) {
                    (Some(a), Some(b)) => Some(a.max(b).min(known.heard_at + TTL)),
                    _ => None,
                };
                return;
            }
        }
        let moved = state
            .peers
            .get(&member.node)
            .is_none_or(|known| known.record.address != member.address);
        if moved
            && state.peers.iter().any(|(node, entry)| {
                *node != member.node && entry.record.address == member.address && entry.live(now)
            })
        {
            state.contested += 1;
            return;
        }
        if !state.peers.contains_key(&member.node) && state.peers.len() >= MAX_PEERS {
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
            member.node.clone(),
            PeerEntry {
                record: member.clone(),
                services,
                heard_at: now,
                expires,
            },
        );
    }

    /// Drops every entry whose time is up (they count no more, but they took room), and
    /// says how many members were turned away since the last purge.
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
        if state.contested > 0 {
            tracing::warn!(
                refused = state.contested,
                "refused records of nodes that claim an address another live node holds \
                 (two nodes advertising one address?)"
            );
            state.contested = 0;
        }
    }

    /// How many entries are held, live or not yet purged.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.state.lock().map_or(0, |state| state.peers.len())
    }

    /// Forgets `incarnation` of `node` (its goodbye, its deleted etcd key).
    pub(crate) fn forget(&self, node: &str, incarnation: u64) {
        let now = Instant::now();
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state
            .peers
            .get(node)
            .is_some_and(|known| known.record.incarnation <= incarnation)
        {
            state.peers.remove(node);
        }
        state
            .departed
            .insert(node.to_owned(), (incarnation, now + TTL * 2));
        state.departed.retain(|_, (_, until)| *until > now);
    }

    /// Live members as their nodes signed them, with the time they have left, for relaying.
    pub(crate) fn members(&self) -> Vec<Member> {
        let now = Instant::now();
        let Ok(state) = self.state.lock() else {
            return Vec::new();
        };
        state
            .peers
            .values()
            .filter(|entry| entry.live(now))
            .map(|entry| Member {
                ttl_ms: entry.expires.map_or(TTL.as_millis() as u32, |expires| {
                    expires.saturating_duration_since(now).as_millis() as u32
                }),
                ..entry.record.clone()
            })
            .collect()
    }

    /// Whether live `node` announces `service` (any version): a peer's call claims a caller,
    /// and this says whether its node runs it.
    pub(crate) fn runs(&self, node: &str, service: &str) -> bool {
        let now = Instant::now();
        self.state.lock().is_ok_and(|state| {
            state.peers.get(node).is_some_and(|entry| {
                entry.live(now) && entry.versions_of(service, None).next().is_some()
            })
        })
    }

    /// Where live `node` listens.
    pub(crate) fn address_of(&self, node: &str) -> Option<SocketAddr> {
        let now = Instant::now();
        let state = self.state.lock().ok()?;
        state
            .peers
            .get(node)
            .filter(|entry| entry.live(now))
            .map(|entry| entry.record.address)
    }

    /// The live peer that declares `queue` (the lowest address, should two claim it).
    pub(crate) fn owner_of(&self, queue: &str) -> Option<SocketAddr> {
        let now = Instant::now();
        let state = self.state.lock().ok()?;
        state
            .peers
            .values()
            .filter(|entry| entry.live(now) && entry.record.queues.iter().any(|q| q == queue))
            .map(|entry| entry.record.address)
            .min()
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
            .values()
            .filter(|entry| entry.live(now) && entry.versions_of(name, range).next().is_some())
            .map(|entry| entry.record.address)
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
            .values()
            .filter(|entry| entry.live(now))
            .flat_map(|entry| {
                entry.versions_of(name, range).map(|version| {
                    (
                        entry.record.address,
                        entry.record.node.clone(),
                        version.clone(),
                    )
                })
            })
            .collect();
        found.sort_by_key(|(addr, _, _)| *addr);
        found
    }

    /// Every node this one knows of, with where it stands at `now`: `live`, `expired` (its
    /// record ran out and is not yet purged) or `departed` (it said goodbye lately). Sorted
    /// by node name.
    pub(crate) fn peer_states(&self, now: Instant) -> Vec<(String, &'static str)> {
        let Ok(state) = self.state.lock() else {
            return Vec::new();
        };
        let mut states: Vec<(String, &'static str)> = state
            .peers
            .iter()
            .map(|(node, entry)| {
                let label = if entry.live(now) { "live" } else { "expired" };
                (node.clone(), label)
            })
            .chain(
                state
                    .departed
                    .iter()
                    .filter(|(node, (_, until))| *until > now && !state.peers.contains_key(*node))
                    .map(|(node, _)| (node.clone(), "departed")),
            )
            .collect();
        states.sort();
        states
    }

    pub(crate) fn view(&self) -> Vec<PeerView> {
        let now = Instant::now();
        let Ok(state) = self.state.lock() else {
            return Vec::new();
        };
        let mut view: Vec<PeerView> = state
            .peers
            .values()
            .filter(|entry| entry.live(now))
            .map(|entry| PeerView {
                address: entry.record.address,
                node: entry.record.node.clone(),
                services: entry
                    .services
                    .iter()
                    .map(|(name, version)| format!("{name}@{version}"))
                    .collect(),
                queues: entry.record.queues.clone(),
                expires_in_ms: entry
                    .expires
                    .map(|expires| expires.saturating_duration_since(now).as_millis() as u64),
            })
            .collect();
        view.sort_by_key(|peer| peer.address);
        view
    }
}

/// `member` with `services` and `queues`, under an incarnation newer than its current one,
/// signed anew with `cert` (a failure is logged: peers will drop the record).
pub(crate) fn reincarnate(
    member: &mut Member,
    services: Vec<(String, String)>,
    queues: Vec<String>,
    cert: &NodeCert,
) {
    member.services = services;
    member.queues = queues;
    member.incarnation = new_incarnation().max(member.incarnation + 1);
    member.beat = 0;
    if let Err(error) = sign(member, cert) {
        tracing::error!(%error, "cannot sign this node's record; peers will drop it");
    }
}

/// A number that differs between two starts of the same node.
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
            beat: 0,
            services: Vec::new(),
            queues: Vec::new(),
            ttl_ms: 0,
            proof: Default::default(),
        };
        for n in 0..MAX_PEERS + 100 {
            registry.learn(&numbered(n), Some(TTL));
        }
        assert_eq!(registry.held(), MAX_PEERS);
        assert_eq!(registry.members().len(), MAX_PEERS);
        // Known members are still renewed at the cap (by a newer beat).
        registry.learn(
            &Member {
                beat: 1,
                ..numbered(0)
            },
            Some(TTL),
        );
        tokio::time::advance(TTL / 2).await;
        registry.learn(
            &Member {
                beat: 2,
                ..numbered(0)
            },
            Some(TTL),
        );
        tokio::time::advance(TTL / 2).await;
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
            beat: 0,
            services: vec![("hello".into(), "1.2.0".into())],
            queues: Vec::new(),
            ttl_ms,
            proof: Default::default(),
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
        registry.forget("b", 5);
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

    #[tokio::test(start_paused = true)]
    async fn only_a_newer_beat_renews_a_node_and_one_address_is_one_nodes() {
        let registry = Registry::default();
        let mut b = member(5, 0);
        b.beat = 1;
        registry.learn(&b, Some(TTL));
        // A relay replays the same beat with a fresh TTL: it cannot keep b alive past TTL
        // after that beat was first heard.
        tokio::time::advance(TTL - Duration::from_millis(10)).await;
        registry.learn(&b, Some(TTL));
        tokio::time::advance(Duration::from_millis(10)).await;
        assert!(
            registry.candidates("hello", None).is_empty(),
            "a replay kept b alive"
        );
        // b's own next beat does.
        b.beat = 2;
        registry.learn(&b, Some(TTL));
        assert_eq!(registry.candidates("hello", None), vec![b.address]);
        // An older beat of the same incarnation changes nothing.
        let mut stale = b.clone();
        stale.beat = 1;
        stale.services = vec![("other".into(), "1.0.0".into())];
        registry.learn(&stale, Some(TTL));
        assert!(registry.candidates("other", None).is_empty());

        // Another node that claims b's address while b lives is refused.
        let mut c = member(9, 0);
        c.node = "c".into();
        c.services = vec![("payments".into(), "1.0.0".into())];
        registry.learn(&c, Some(TTL));
        assert!(registry.candidates("payments", None).is_empty());
        assert!(!registry.runs("c", "payments"));
        // b restarted elsewhere: one entry, at its new address.
        let mut moved = member(6, 0);
        moved.address = SocketAddr::from(([127, 0, 0, 3], 7000));
        registry.learn(&moved, Some(TTL));
        assert_eq!(registry.held(), 1);
        assert_eq!(registry.candidates("hello", None), vec![moved.address]);
        assert!(registry.runs("b", "hello"));
        assert!(!registry.runs("b", "payments"));
        // Now the old address is free.
        registry.learn(&c, Some(TTL));
        assert!(registry.runs("c", "payments"));
    }

    mod signed {
        #![allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
        use super::*;
        use crate::transport::{CertPem, Identity, generate_ca, issue_node_cert};

        fn cert_of(ca: &CertPem, node: &str) -> Arc<NodeCert> {
            Identity::from_pem(&ca.cert, &issue_node_cert(ca, node).unwrap())
                .unwrap()
                .node_cert()
        }

        fn signed_by(cert: &NodeCert, node: &str) -> Member {
            let mut record = member(5, 0);
            record.node = node.into();
            sign(&mut record, cert).unwrap();
            record
        }

        #[tokio::test(start_paused = true)]
        async fn a_record_is_believed_only_as_its_own_node_signed_it() {
            let ca = generate_ca("cluster").unwrap();
            let (a, b, c) = (cert_of(&ca, "a"), cert_of(&ca, "b"), cert_of(&ca, "c"));
            let registry = Registry::default();

            // b's own record, relayed with less time left: believed.
            let mut record = signed_by(&b, "b");
            record.ttl_ms = 700;
            registry.learn_signed(&record, Some(TTL), &a).unwrap();
            assert!(registry.runs("b", "hello"));

            // c, a member of the cluster, signs a record about b: refused.
            let mut forged = signed_by(&c, "b");
            forged.beat = 9;
            sign(&mut forged, &c).unwrap();
            let refused = registry.learn_signed(&forged, Some(TTL), &a).unwrap_err();
            assert!(
                matches!(refused, RecordError::NotItsOwn { .. }),
                "{refused}"
            );
            assert!(
                refused
                    .to_string()
                    .contains("a node speaks only for itself")
            );

            // b's record with a service added after b signed it: refused, b's entry stays.
            let mut tampered = signed_by(&b, "b");
            tampered.beat = 7;
            sign(&mut tampered, &b).unwrap();
            tampered.services.push(("payments".into(), "1.0.0".into()));
            let refused = registry.learn_signed(&tampered, Some(TTL), &a).unwrap_err();
            assert!(matches!(refused, RecordError::Unproven { .. }), "{refused}");
            assert!(!registry.runs("b", "payments"));
            // So is one moved to another address.
            let mut moved = signed_by(&b, "b");
            moved.beat = 8;
            sign(&mut moved, &b).unwrap();
            moved.address = SocketAddr::from(([10, 9, 9, 9], 7000));
            assert!(registry.learn_signed(&moved, Some(TTL), &a).is_err());

            // A node of another cluster, named like one of ours: refused.
            let other = generate_ca("other").unwrap();
            let mut stranger = signed_by(&cert_of(&other, "b"), "b");
            stranger.beat = 20;
            sign(&mut stranger, &cert_of(&other, "b")).unwrap();
            let refused = registry.learn_signed(&stranger, Some(TTL), &a).unwrap_err();
            assert!(
                refused.to_string().contains("not one of this cluster"),
                "{refused}"
            );
            assert_eq!(registry.candidates("hello", None), vec![record.address]);

            // An unsigned record about a node nobody heard of: refused.
            let mut unsigned = member(1, 0);
            unsigned.node = "d".into();
            unsigned.address = SocketAddr::from(([127, 0, 0, 9], 7000));
            assert!(registry.learn_signed(&unsigned, Some(TTL), &a).is_err());
            assert!(!registry.runs("d", "hello"));
        }
    }
}
