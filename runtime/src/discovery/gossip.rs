//! The embedded backend: push-pull gossip over the nodes' own QUIC transport.
//!
//! Each round a node sends `Gossip { itself, everyone it knows }` to the seeds it has not
//! heard from and to at most [`FANOUT`] live peers chosen at random, and takes in the same
//! from each answer. Seeds only bootstrap: a node that names one seed still learns (and is
//! learned by) every node that seed knows, within a couple of rounds. News spreads
//! epidemically (push-pull), so with [`super::TTL`] four rounds long a node's own word
//! reaches every peer well before it runs out; a mesh of up to `FANOUT + 1` nodes talks to
//! every peer every round. A frame of more than [`MAX_MEMBERS_PER_FRAME`] members is refused
//! whole, and expired entries are purged every round.
//!
//! A node speaks only for itself: it signs its own record anew every round (one beat later)
//! with its certificate's key, and peers relay that record unchanged. A record is believed
//! when the certificate it carries chains to the cluster CA and names the node the record is
//! about; a relay can delay a record, never change it or keep it alive past its node's last
//! beat. A goodbye is signed the same way.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::{BoxFuture, GOSSIP_INTERVAL, LEAVE_TIMEOUT, Member, Membership, Registry, TTL};
use crate::transport::{NodeCert, Peer, Transport, TransportError};
use crate::wire::frame::{FailureKind, Frame, GOODBYE_PURPOSE, goodbye_words};

/// Live peers a round exchanges news with, beside seeds not heard from yet.
const FANOUT: usize = 4;
/// Members a gossip frame may carry: a registry's worth and the sender itself.
const MAX_MEMBERS_PER_FRAME: usize = super::MAX_PEERS + 1;

/// Embedded membership for one node.
pub(crate) struct Gossip {
    registry: Arc<Registry>,
    transport: Arc<Transport>,
    /// Signs this node's words and checks its peers'.
    cert: Arc<NodeCert>,
    /// This node, as it announces itself (`ttl_ms` = [`TTL`]), signed.
    me: Mutex<Member>,
    address: SocketAddr,
    seeds: Vec<SocketAddr>,
}

impl Gossip {
    pub(crate) fn new(
        registry: Arc<Registry>,
        transport: Arc<Transport>,
        cert: Arc<NodeCert>,
        mut me: Member,
        seeds: Vec<SocketAddr>,
    ) -> Result<Self, TransportError> {
        me.ttl_ms = TTL.as_millis() as u32;
        super::sign(&mut me, &cert)?;
        let seeds = seeds
            .into_iter()
            .filter(|seed| *seed != me.address)
            .collect();
        Ok(Self {
            registry,
            transport,
            cert,
            address: me.address,
            me: Mutex::new(me),
            seeds,
        })
    }

    /// Answers `peer`'s gossip or goodbye frame.
    pub(crate) fn answer(&self, peer: &Peer, frame: Frame) -> Frame {
        match frame {
            Frame::Gossip { members } => match self.take_in(&members, peer.address) {
                Ok(()) => Frame::Gossip {
                    members: self.news(),
                },
                Err(message) => Frame::Failed {
                    kind: FailureKind::BadRequest,
                    message,
                },
            },
            Frame::Goodbye {
                node,
                address,
                incarnation,
                proof,
            } => {
                let words = goodbye_words(&node, address, incarnation);
                match super::check_signed(&self.cert, &node, GOODBYE_PURPOSE, words, &proof) {
                    Ok(()) => {
                        tracing::info!(%node, %address, from = %peer.node, "peer said goodbye");
                        self.registry.forget(&node, incarnation);
                        Frame::Ack
                    }
                    Err(error) => {
                        tracing::warn!(from = %peer.node, %error, "refused a goodbye");
                        Frame::Failed {
                            kind: FailureKind::Rejected,
                            message: error.to_string(),
                        }
                    }
                }
            }
            other => Frame::Failed {
                kind: FailureKind::BadRequest,
                message: format!("gossip does not answer {} frames", other.kind()),
            },
        }
    }

    fn news(&self) -> Vec<Member> {
        let mut members: Vec<Member> = self.me.lock().map(|me| me.clone()).into_iter().collect();
        members.extend(self.registry.members());
        members
    }

    /// Learns `members` from a peer's frame, or refuses the whole frame if it carries more
    /// than [`MAX_MEMBERS_PER_FRAME`]. Records their nodes did not sign are left out (and
    /// logged); the rest are taken.
    fn take_in(&self, members: &[Member], from: SocketAddr) -> Result<(), String> {
        if members.len() > MAX_MEMBERS_PER_FRAME {
            tracing::warn!(
                members = members.len(),
                max = MAX_MEMBERS_PER_FRAME,
                "refused a gossip frame with too many members"
            );
            return Err(format!(
                "a gossip frame carries at most {MAX_MEMBERS_PER_FRAME} members, this one {}",
                members.len()
            ));
        }
        let mut refused = 0;
        for member in members.iter().filter(|m| m.address != self.address) {
            let ttl = Duration::from_millis(u64::from(member.ttl_ms)).min(TTL);
            if let Err(error) = self.registry.learn_signed(member, Some(ttl), &self.cert) {
                if refused == 0 {
                    tracing::warn!(%from, %error, "refused a record in a gossip frame");
                }
                refused += 1;
            }
        }
        if refused > 1 {
            tracing::warn!(%from, refused, "refused records in one gossip frame");
        }
        Ok(())
    }

    /// Seeds and every live peer, once each (a goodbye goes to all of them).
    fn targets(&self) -> Vec<SocketAddr> {
        let mut targets = self.seeds.clone();
        targets.extend(self.registry.members().iter().map(|m| m.address));
        targets.sort();
        targets.dedup();
        targets.retain(|target| *target != self.address);
        targets
    }

    async fn round(self: &Arc<Self>) {
        self.registry.purge();
        if let Ok(mut me) = self.me.lock()
            && let Err(error) = super::sign(&mut me, &self.cert)
        {
            tracing::error!(%error, "cannot sign this node's record; peers will drop it");
        }
        let members = self.news();
        // This node and every live peer; `round_targets` leaves this node out.
        let known = members.iter().map(|m| m.address).collect();
        let targets = round_targets(
            &self.seeds,
            known,
            self.address,
            FANOUT,
            &mut fastrand::Rng::new(),
        );
        let Some(frame) = encoded_once(&Frame::Gossip { members }) else {
            return;
        };
        let exchanges = targets.into_iter().map(|peer| {
            let this = self.clone();
            let frame = frame.clone();
            tokio::spawn(async move {
                match this.transport.request_encoded(peer, &frame, TTL / 2).await {
                    // An oversized answer is refused whole; `take_in` logged it.
                    Ok(Frame::Gossip { members }) => {
                        let _ = this.take_in(&members, peer);
                    }
                    Ok(other) => tracing::warn!(%peer, ?other, "peer answered gossip oddly"),
                    Err(error) => tracing::debug!(%peer, %error, "peer did not answer gossip"),
                }
            })
        });
        for exchange in exchanges.collect::<Vec<_>>() {
            let _ = exchange.await;
        }
    }
}

impl Membership for Gossip {
    fn announce(&self, services: Vec<(String, String)>, queues: Vec<String>) {
        if let Ok(mut me) = self.me.lock() {
            super::reincarnate(&mut me, services, queues, &self.cert);
        }
    }

    fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut ticker = tokio::time::interval(GOSSIP_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stop.wait_for(|stop| *stop) => return,
                }
                self.round().await;
            }
        })
    }

    fn leave(self: Arc<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let incarnation = self.me.lock().map_or(0, |me| me.incarnation);
            let node = self.cert.name().to_owned();
            let signed = goodbye_words(&node, self.address, incarnation)
                .map_err(|err| TransportError::Frame(err.to_string()))
                .and_then(|words| self.cert.sign(GOODBYE_PURPOSE, &words));
            let proof = match signed {
                Ok(proof) => proof,
                Err(error) => {
                    tracing::error!(%error, "cannot sign a goodbye; peers will notice this node is gone");
                    return;
                }
            };
            let goodbye = Frame::Goodbye {
                node,
                address: self.address,
                incarnation,
                proof,
            };
            let Some(goodbye) = encoded_once(&goodbye) else {
                return;
            };
            let sends: Vec<_> = self
                .targets()
                .into_iter()
                .map(|peer| {
                    let transport = self.transport.clone();
                    let goodbye = goodbye.clone();
                    tokio::spawn(async move {
                        transport
                            .request_encoded(peer, &goodbye, LEAVE_TIMEOUT)
                            .await
                            .is_ok()
                    })
                })
                .collect();
            let mut told = 0;
            for send in sends {
                told += usize::from(matches!(send.await, Ok(true)));
            }
            tracing::info!(told, "said goodbye to the mesh");
        })
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }
}

/// `frame` encoded once, to send the same bytes to every target; `None` (logged) if it does
/// not encode.
fn encoded_once(frame: &Frame) -> Option<Arc<[u8]>> {
    crate::transport::encode(frame)
        .map(Into::into)
        .map_err(|error| tracing::error!(%error, frame = frame.kind(), "cannot encode this node's frame"))
        .ok()
}

/// Whom a round talks to: every seed not among the `known` live peers (bootstrap, and a
/// seed that came back), and at most `fanout` of the known ones, chosen at random; never
/// `me`, never one twice.
fn round_targets(
    seeds: &[SocketAddr],
    mut known: Vec<SocketAddr>,
    me: SocketAddr,
    fanout: usize,
    rng: &mut fastrand::Rng,
) -> Vec<SocketAddr> {
    known.retain(|peer| *peer != me);
    let mut targets: Vec<SocketAddr> = seeds
        .iter()
        .filter(|seed| **seed != me && !known.contains(seed))
        .copied()
        .collect();
    rng.shuffle(&mut known);
    targets.extend(known.into_iter().take(fanout));
    targets.sort();
    targets.dedup();
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 7000))
    }

    #[test]
    fn a_round_talks_to_unheard_seeds_and_at_most_fanout_known_peers() {
        let mut rng = fastrand::Rng::with_seed(7);
        let me = addr(1);
        // A small mesh: everyone, every round.
        let small = round_targets(&[addr(2)], vec![addr(2), addr(3), me], me, 4, &mut rng);
        assert_eq!(small, vec![addr(2), addr(3)]);
        // A large one: four known peers, plus the seed nobody has heard from.
        let known: Vec<SocketAddr> = (2..=200).map(addr).collect();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let targets = round_targets(&[addr(250)], known.clone(), me, 4, &mut rng);
            assert_eq!(targets.len(), 5, "{targets:?}");
            assert!(targets.contains(&addr(250)));
            assert!(!targets.contains(&me));
            seen.extend(targets);
        }
        // Random choice reaches everyone over rounds.
        assert!(seen.len() > 150, "{}", seen.len());
    }

    #[tokio::test]
    #[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
    async fn a_goodbye_counts_only_signed_by_the_node_that_leaves() {
        use crate::transport::{Identity, generate_ca, issue_node_cert};
        let ca = generate_ca("cluster").unwrap();
        let identity = |name: &str| {
            Identity::from_pem(&ca.cert, &issue_node_cert(&ca, name).unwrap()).unwrap()
        };
        let (a, b, c) = (identity("a"), identity("b"), identity("c"));
        let registry = Arc::new(Registry::default());
        let transport = Arc::new(Transport::bind(addr_local(), &a).unwrap());
        let me = |node: &str, n: u8| Member {
            node: node.into(),
            address: addr(n),
            incarnation: 5,
            beat: 0,
            services: vec![("hello".into(), "1.0.0".into())],
            queues: Vec::new(),
            ttl_ms: 0,
            proof: Default::default(),
        };
        let gossip = Gossip::new(
            registry.clone(),
            transport,
            a.node_cert(),
            me("a", 1),
            vec![],
        )
        .unwrap();
        let mut record = me("b", 2);
        record.ttl_ms = 2000;
        super::super::sign(&mut record, &b.node_cert()).unwrap();
        let from_c = Peer {
            node: "c".into(),
            address: addr(3),
        };
        assert_eq!(
            gossip.answer(
                &from_c,
                Frame::Gossip {
                    members: vec![record]
                }
            ),
            Frame::Gossip {
                members: gossip.news()
            }
        );
        assert!(registry.runs("b", "hello"));

        let goodbye = |signer: &Identity| {
            let words = goodbye_words("b", addr(2), 5).unwrap();
            Frame::Goodbye {
                node: "b".into(),
                address: addr(2),
                incarnation: 5,
                proof: signer.node_cert().sign(GOODBYE_PURPOSE, &words).unwrap(),
            }
        };
        // c says b left: not believed.
        let answer = gossip.answer(&from_c, goodbye(&c));
        assert!(
            matches!(&answer, Frame::Failed { kind: FailureKind::Rejected, message } if message.contains("node `c` signed it")),
            "{answer:?}"
        );
        assert!(registry.runs("b", "hello"));
        // b's own goodbye, relayed by anyone, is.
        assert_eq!(gossip.answer(&from_c, goodbye(&b)), Frame::Ack);
        assert!(!registry.runs("b", "hello"));
    }

    fn addr_local() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }
}
