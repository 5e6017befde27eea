//! `switchyard:runtime/grpc`: the messages of a server-streaming gRPC answer, handed to the
//! ingress as the guest sends them. The ingress gives the store an [`AnswerStream`] for a
//! request on a `grpc` route; any other request has none, and `send` says so.

use bytes::Bytes;

use super::HostState;
use super::bindings::switchyard::runtime::grpc;

/// Where the current gRPC call's framed messages go: the ingress's response body. Bounded,
/// so a guest that writes faster than the client reads waits (HTTP/2 flow control reaches
/// it through here).
pub(crate) type AnswerStream = tokio::sync::mpsc::Sender<Bytes>;

/// Frames a `send` may hold queued before it waits for the client.
pub(crate) const ANSWER_STREAM_DEPTH: usize = 8;

impl grpc::Host for HostState {
    async fn send(&mut self, frames: Vec<u8>) -> Result<(), String> {
        let Some(stream) = &self.answer_stream else {
            return Err(
                "the current request is not a gRPC call (route it as `grpc /pkg.Service/Method`)"
                    .to_owned(),
            );
        };
        // The deadline stops the guest itself; this wait ends when the client reads or leaves.
        stream
            .send(Bytes::from(frames))
            .await
            .map_err(|_| "the client of this gRPC call went away".to_owned())
    }
}
