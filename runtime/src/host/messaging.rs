//! `switchyard:runtime/messaging`: sends to this node's durable queues.

use super::HostState;
use crate::messaging::{Outgoing, SendError};
use crate::telemetry::TraceContext;
use crate::wasm::imports::messaging::{self as wit, OutgoingMessage};
use crate::wasm::imports::types::MessageKind;

/// The largest message body a queue takes.
const MAX_BODY_BYTES: usize = 1024 * 1024;

impl wit::Host for HostState {
    async fn send(
        &mut self,
        queue: String,
        message: OutgoingMessage,
    ) -> Result<String, wit::SendError> {
        if message.body.len() > MAX_BODY_BYTES {
            return Err(wit::SendError::TooLarge(format!(
                "a message to queue `{queue}` has a body of {} bytes; a queue takes at most \
                 {MAX_BODY_BYTES} (store large payloads elsewhere and send a reference)",
                message.body.len()
            )));
        }
        let trace = self
            .trace
            .as_ref()
            .map_or_else(TraceContext::root, TraceContext::child);
        let outgoing = Outgoing {
            kind: match message.kind {
                MessageKind::Document => 0,
                MessageKind::Command => 1,
                MessageKind::Event => 2,
            },
            key: message.key,
            headers: message.headers,
            reply_to: message.reply_to,
            body: message.body,
        };
        let broker = self.guest.messaging.clone();
        let sent = broker
            .send(&queue, &self.guest.service, Some(trace.header()), outgoing)
            .await;
        sent.map_err(|err| match err {
            SendError::UnknownQueue(m) => wit::SendError::UnknownQueue(m),
            SendError::Full(m) => wit::SendError::Full(m),
            SendError::TooLarge(m) => wit::SendError::TooLarge(m),
            SendError::Unavailable(m) => wit::SendError::Unavailable(m),
        })
    }
}
