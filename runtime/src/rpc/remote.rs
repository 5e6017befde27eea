//! The remote endpoint: a callee on a peer, reached with one QUIC stream per call.

use std::net::SocketAddr;

use tracing::Instrument;

use super::route::Candidates;
use super::{Client, Remote};
use crate::call::{Call, CallError, Endpoint, Reply};
use crate::manifest::Strategy;
use crate::transport::TransportError;
use crate::wire::Frame;

/// A call that never reached its peer, and why.
struct Undelivered(String);

impl Client {
    /// Sends `call` to `peer`. If it never got there (no connection, no stream), the peer is
    /// ejected for a moment and another instance takes the call, within what is left of its
    /// deadline; a call that may have reached its peer is never sent twice.
    pub(super) async fn call_remote(
        &self,
        remote: &Remote,
        mut peer: SocketAddr,
        call: Call,
    ) -> Result<Reply, CallError> {
        let deadline = call.deadline;
        let target = call.target.clone();
        let name = target.service.as_str();
        let mut frame = Frame::from(call);
        let mut tried = Vec::new();
        loop {
            if let Frame::Call { deadline_ms, .. } = &mut frame {
                *deadline_ms = deadline.remaining_ms();
            }
            let sent = {
                let _in_flight = remote.balancer.track(Some(peer));
                send_call(remote, peer, name, &frame, deadline.remaining()).await
            };
            let reason = match sent {
                Ok(answer) => return answer,
                Err(Undelivered(reason)) => reason,
            };
            remote.balancer.eject(peer, reason.clone());
            tried.push(peer);
            let unavailable = || CallError::Unavailable(format!("service `{name}`: {reason}"));
            let (mut others, strategy) = match self.candidates(&target, false) {
                Ok(Candidates::One(endpoint)) => (vec![endpoint.peer()], Strategy::default()),
                Ok(Candidates::Several(others, strategy)) => (others, strategy),
                Err(_) => return Err(unavailable()),
            };
            others.retain(|other| other.is_none_or(|addr| !tried.contains(&addr)));
            if others.is_empty() || deadline.remaining().is_zero() {
                return Err(unavailable());
            }
            match Endpoint::from(remote.balancer.pick(&others, strategy)) {
                Endpoint::Peer(other) => peer = other,
                Endpoint::Local => {
                    let Ok(mut call) = Call::try_from(frame) else {
                        return Err(unavailable());
                    };
                    call.deadline = deadline;
                    let _in_flight = remote.balancer.track(None);
                    return self.call_local(call).await;
                }
            }
        }
    }
}

async fn send_call(
    remote: &Remote,
    peer: SocketAddr,
    name: &str,
    frame: &Frame,
    budget: std::time::Duration,
) -> Result<Result<Reply, CallError>, Undelivered> {
    let span = tracing::debug_span!("rpc", callee = name, %peer);
    let answer = match remote
        .transport
        .request(peer, frame, budget)
        .instrument(span)
        .await
    {
        Ok(answer) => Result::from(answer),
        Err(TransportError::TimedOut { .. }) => Err(CallError::Timeout),
        Err(error @ TransportError::Unreachable { .. }) => {
            return Err(Undelivered(error.to_string()));
        }
        Err(error) => Err(CallError::Unavailable(format!("service `{name}`: {error}"))),
    };
    Ok(answer)
}
