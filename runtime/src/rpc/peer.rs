//! Calls and streams from other nodes, answered here.

use tokio::io::AsyncWriteExt;

use super::Client;
use super::local::local_pipe;
use crate::call::{ByteStream, Call, CallError};
use crate::transport::{Peer, RawStream};
use crate::wire::{self, Frame};

/// Runs other nodes' calls and streams here.
pub(crate) struct PeerHandler {
    pub(crate) client: Client,
}

impl PeerHandler {
    /// Answers `peer`'s call frame.
    pub(crate) async fn handle(&self, peer: &Peer, frame: Frame) -> Frame {
        let answer = match Call::try_from(frame) {
            Ok(call) => self.client.call_local_from(call, Some(&peer.node)).await,
            Err(error) => Err(error),
        };
        match answer {
            Ok(reply) => Frame::from(reply),
            Err(error) => Frame::from(error),
        }
    }

    /// Serves a peer guest's raw stream with a local `stream-handler`.
    pub(crate) async fn serve_stream(&self, peer: &Peer, frame: Frame, mut stream: RawStream) {
        let Frame::OpenStream {
            service,
            range,
            caller,
            deadline_ms,
        } = frame
        else {
            return;
        };
        let budget = std::time::Duration::from_millis(u64::from(deadline_ms));
        // Admit first (service, version, export, instance limit), then say yes: a refusal is
        // clear.
        let admitted = wire::target(service, range)
            .and_then(|target| self.client.local_stream_slot(&target))
            .and_then(|slot| {
                slot.accepts(&caller)?;
                self.client.vouch(&slot, &peer.node, &caller)?;
                local_pipe(&slot, caller, budget).map_err(CallError::from)
            });
        let local = match admitted {
            Ok(local) => local,
            Err(error) => {
                let _ = stream.answer(&Frame::from(error)).await;
                let _ = stream.send.finish();
                return;
            }
        };
        if stream.answer(&Frame::Ack).await.is_err() {
            return;
        }
        // Splice the QUIC stream and the guest's in-memory end, both ways.
        let ByteStream {
            mut reader,
            mut writer,
        } = local;
        let RawStream { mut send, mut recv } = stream;
        let inbound = async {
            let _ = tokio::io::copy(&mut recv, &mut writer).await;
            let _ = writer.shutdown().await;
        };
        let outbound = async {
            let _ = tokio::io::copy(&mut reader, &mut send).await;
            let _ = send.finish();
        };
        tokio::join!(inbound, outbound);
    }
}
