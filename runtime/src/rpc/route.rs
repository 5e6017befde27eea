//! Where a call goes: the instances that fit it, and the one chosen.

use std::net::SocketAddr;

use super::{Client, balance};
use crate::call::{Call, CallError, Candidate, Endpoint, Instance, Pick, Reply, Target};
use crate::manifest::Strategy;

/// The instances that fit a call.
pub(super) enum Candidates {
    One(Endpoint),
    /// More than one (`None` is this node), and the service's strategy.
    Several(Vec<Option<SocketAddr>>, Strategy),
}

impl Client {
    /// One attempt: route (asking `pick`, if several instances fit), then send. A gRPC
    /// answer's status is the HTTP status its code means ([`Reply::judged_as_grpc`]).
    pub(super) async fn routed(
        &self,
        call: Call,
        pick: Option<&dyn Pick>,
    ) -> Result<Reply, CallError> {
        let grpc =
            call.method.split_once(' ').map(|(verb, _)| verb) == Some(crate::manifest::GRPC_METHOD);
        let reply = self.routed_to_one(call, pick).await?;
        Ok(if grpc { reply.judged_as_grpc() } else { reply })
    }

    /// Routes `call` to one instance (asking `pick`, if any) and sends it there.
    async fn routed_to_one(&self, call: Call, pick: Option<&dyn Pick>) -> Result<Reply, CallError> {
        let spread = call.spread.as_deref();
        let endpoint = match self.candidates(&call.target, spread.is_some())? {
            Candidates::One(endpoint) => endpoint,
            Candidates::Several(candidates, strategy) => {
                let candidates = match spread {
                    Some(spread) => spread.spread_out(candidates),
                    None => candidates,
                };
                let picked = match pick {
                    Some(pick) => self.ask_pick(pick, &call, &candidates).await,
                    None => None,
                };
                let chosen = match (picked, &self.remote) {
                    (Some(index), _) => candidates[index],
                    (None, Some(remote)) => remote.balancer.pick(&candidates, strategy),
                    (None, None) => None,
                };
                Endpoint::from(chosen)
            }
        };
        if let Some(spread) = spread {
            spread.take(endpoint);
        }
        let (Some(remote), Endpoint::Peer(peer)) = (&self.remote, endpoint) else {
            let _in_flight = self
                .remote
                .as_ref()
                .map(|remote| remote.balancer.track(None));
            return self.call_local(call).await;
        };
        self.call_remote(remote, peer, call).await
    }

    /// Asks `pick` to choose among `candidates` (each described by node and load).
    async fn ask_pick(
        &self,
        pick: &dyn Pick,
        call: &Call,
        candidates: &[Option<SocketAddr>],
    ) -> Option<usize> {
        let remote = self.remote.as_ref()?;
        let instances = remote
            .registry
            .instances(&call.target.service, call.target.range.as_ref());
        let local_node = self.node_name();
        let described: Vec<Candidate> = candidates
            .iter()
            .map(|candidate| Candidate {
                endpoint: Endpoint::from(*candidate),
                node: match candidate {
                    None => local_node.clone(),
                    Some(addr) => instances
                        .iter()
                        .find(|(a, _, _)| a == addr)
                        .map_or_else(|| addr.to_string(), |(_, node, _)| node.clone()),
                },
                in_flight: remote.balancer.in_flight(*candidate),
            })
            .collect();
        pick.pick(call, &described).await
    }

    /// Where a call or stream to `target` goes: this node or a peer, by the service's
    /// balancing strategy.
    pub(super) fn route(&self, target: &Target) -> Result<Endpoint, CallError> {
        Ok(match self.candidates(target, false)? {
            Candidates::One(endpoint) => endpoint,
            Candidates::Several(candidates, strategy) => match &self.remote {
                Some(remote) => Endpoint::from(remote.balancer.pick(&candidates, strategy)),
                None => Endpoint::Local,
            },
        })
    }

    /// The instances a call to `target` may go to. A service that runs here only at an
    /// unfitting version routes here, so the local path can say precisely what does not fit.
    /// `spreading` (racing copies of a call) lists peers even when a local instance would be
    /// preferred, so a hedge can go elsewhere.
    pub(super) fn candidates(
        &self,
        target: &Target,
        spreading: bool,
    ) -> Result<Candidates, CallError> {
        let name = target.service.as_str();
        let directory = self.directory();
        let local = directory.as_ref().and_then(|d| d.get(name));
        let local_fits = local
            .as_ref()
            .is_some_and(|callee| target.fits(&callee.spec.version));
        let Some(remote) = &self.remote else {
            return Ok(Candidates::One(Endpoint::Local));
        };
        let balance = self.balance.load().get(name).copied().unwrap_or_default();
        if local_fits && balance.prefer_local && !spreading {
            return Ok(Candidates::One(Endpoint::Local));
        }
        let mut peers = remote.registry.candidates(name, target.range.as_ref());
        let unreachable = remote.balancer.retain_reachable(&mut peers);
        let mut candidates: Vec<Option<SocketAddr>> = peers.into_iter().map(Some).collect();
        if local_fits {
            candidates.insert(0, None);
        }
        if candidates.is_empty() {
            if local.is_some() {
                return Ok(Candidates::One(Endpoint::Local));
            }
            if let Some(reason) = unreachable {
                return Err(CallError::Unavailable(format!(
                    "service `{name}`: no node that runs it could be reached in the last \
                     {:?} ({reason})",
                    balance::EJECTION
                )));
            }
            return Err(CallError::Unavailable(match &target.range {
                Some(range) => format!("no node runs service `{name}` at `{range}`"),
                None => format!("no service named `{name}` is running on this node or its peers"),
            }));
        }
        if let [only] = candidates[..] {
            return Ok(Candidates::One(Endpoint::from(only)));
        }
        Ok(Candidates::Several(candidates, balance.strategy))
    }

    /// Healthy instances of `target`: this node's first, then peers'.
    pub(super) fn resolve(&self, target: &Target) -> Vec<Instance> {
        let mut found = Vec::new();
        let directory = self.directory();
        if let Some((node, callee)) = directory.as_ref().and_then(|directory| {
            Some((directory.node().to_owned(), directory.get(&target.service)?))
        }) && target.fits(&callee.spec.version)
        {
            found.push(Instance {
                node,
                endpoint: Endpoint::Local,
                version: callee.spec.version.to_string(),
            });
        }
        if let Some(remote) = &self.remote {
            found.extend(
                remote
                    .registry
                    .instances(&target.service, target.range.as_ref())
                    .into_iter()
                    .map(|(address, node, version)| Instance {
                        node,
                        endpoint: Endpoint::Peer(address),
                        version: version.to_string(),
                    }),
            );
        }
        found
    }
}
