//! The embedded backend: push-pull gossip over the nodes' own QUIC transport.
//!
//! Each round a node sends `Gossip { itself, everyone it knows }` to its seeds and to every
//! live peer, and takes in the same from each answer. Seeds only bootstrap: a node that
//! names one seed still learns (and is learned by) every node that seed knows, within a
//! couple of rounds. Every exchange goes to every known peer, which keeps liveness direct and
//! the bound simple; for meshes of hundreds of nodes a fan-out limit would be the next step.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::{BoxFuture, GOSSIP_INTERVAL, LEAVE_TIMEOUT, Member, Membership, Registry, TTL};
use crate::transport::Transport;
use crate::wire::frame::{FailureKind, Frame};

/// Embedded membership for one node.
pub(crate) struct Gossip {
    registry: Arc<Registry>,
    transport: Arc<Transport>,
    /// This node, as it announces itself (`ttl_ms` = [`TTL`]).
    me: Mutex<Member>,
    address: SocketAddr,
    seeds: Vec<SocketAddr>,
}

impl Gossip {
    pub(crate) fn new(
        registry: Arc<Registry>,
        transport: Arc<Transport>,
        mut me: Member,
        seeds: Vec<SocketAddr>,
    ) -> Self {
        me.ttl_ms = TTL.as_millis() as u32;
        let seeds = seeds
            .into_iter()
            .filter(|seed| *seed != me.address)
            .collect();
        Self {
            registry,
            transport,
            address: me.address,
            me: Mutex::new(me),
            seeds,
        }
    }

    /// Answers a peer's gossip or goodbye frame.
    pub(crate) fn answer(&self, frame: Frame) -> Frame {
        match frame {
            Frame::Gossip { members } => {
                self.take_in(&members);
                Frame::Gossip {
                    members: self.news(),
                }
            }
            Frame::Goodbye {
                address,
                incarnation,
            } => {
                tracing::info!(peer = %address, "peer said goodbye");
                self.registry.forget(address, incarnation);
                Frame::Ack
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

    fn take_in(&self, members: &[Member]) {
        for member in members.iter().filter(|m| m.address != self.address) {
            let ttl = Duration::from_millis(u64::from(member.ttl_ms)).min(TTL);
            self.registry.learn(member, Some(ttl));
        }
    }

    /// Seeds and every live peer, once each.
    fn targets(&self) -> Vec<SocketAddr> {
        let mut targets = self.seeds.clone();
        targets.extend(self.registry.members().iter().map(|m| m.address));
        targets.sort();
        targets.dedup();
        targets.retain(|target| *target != self.address);
        targets
    }

    async fn round(self: &Arc<Self>) {
        let frame = Frame::Gossip {
            members: self.news(),
        };
        let exchanges = self.targets().into_iter().map(|peer| {
            let this = self.clone();
            let frame = frame.clone();
            tokio::spawn(async move {
                match this.transport.request(peer, &frame, TTL / 2).await {
                    Ok(Frame::Gossip { members }) => this.take_in(&members),
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
    fn announce(&self, services: Vec<(String, String)>) {
        if let Ok(mut me) = self.me.lock() {
            super::reincarnate(&mut me, services);
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
            let goodbye = Frame::Goodbye {
                address: self.address,
                incarnation,
            };
            let sends: Vec<_> = self
                .targets()
                .into_iter()
                .map(|peer| {
                    let transport = self.transport.clone();
                    let goodbye = goodbye.clone();
                    tokio::spawn(async move {
                        transport
                            .request(peer, &goodbye, LEAVE_TIMEOUT)
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
