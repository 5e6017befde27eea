//! Raw streams between guests (`quic.connect`, `open-stream`), routed like calls.

use std::time::Duration;

use super::Client;
use super::local::local_pipe;
use crate::call::{ByteStream, CallError, Connection, Endpoint, Target, budget_ms};
use crate::transport::TransportError;
use crate::wire::Frame;

impl Client {
    /// Picks the instance a guest's `quic.connect(target)` goes to.
    pub(super) fn connect(&self, target: Target) -> Result<Connection, CallError> {
        let endpoint = self.route(&target)?;
        let node = match endpoint {
            Endpoint::Local => self.node_name(),
            Endpoint::Peer(peer) => self
                .remote
                .as_ref()
                .and_then(|remote| {
                    let instances = remote
                        .registry
                        .instances(&target.service, target.range.as_ref());
                    instances.into_iter().find(|(addr, _, _)| *addr == peer)
                })
                .map(|(_, node, _)| node)
                .unwrap_or_else(|| peer.to_string()),
        };
        Ok(Connection {
            target,
            endpoint,
            node,
        })
    }

    /// Opens a raw stream on a connection from [`Client::connect`]; the callee's
    /// `stream-handler` runs on a fresh instance for at most `budget` (capped by its own
    /// timeout).
    pub(super) async fn open_stream(
        &self,
        connection: &Connection,
        caller: &str,
        budget: Duration,
    ) -> Result<ByteStream, CallError> {
        let target = &connection.target;
        let peer = match connection.endpoint {
            Endpoint::Local => {
                let slot = self.local_stream_slot(target)?;
                return Ok(local_pipe(&slot, caller.to_owned(), budget)?);
            }
            Endpoint::Peer(peer) => peer,
        };
        let remote = self
            .remote
            .as_ref()
            .ok_or_else(|| CallError::Unavailable("this node has no QUIC transport".into()))?;
        let opening = Frame::OpenStream {
            service: target.service.clone(),
            range: target.range.as_ref().map(ToString::to_string),
            caller: caller.to_owned(),
            deadline_ms: budget_ms(budget),
        };
        match remote.transport.open_stream(peer, &opening, budget).await {
            Ok(Ok(stream)) => Ok(ByteStream {
                reader: Box::new(stream.recv),
                writer: Box::new(stream.send),
            }),
            Ok(Err(answer)) => match Result::from(answer) {
                Err(error) => Err(error),
                Ok(_) => Err(CallError::Remote(format!(
                    "peer {peer} answered a stream with a reply frame"
                ))),
            },
            Err(TransportError::TimedOut { .. }) => Err(CallError::Timeout),
            Err(error) => Err(CallError::Unavailable(format!(
                "service `{}`: {error}",
                target.service
            ))),
        }
    }
}
