//! `switchyard:runtime/messaging`: durable sends through the [`super::Queues`] port.

use super::bindings::imports::messaging::{self as wit, OutgoingMessage};
use super::bindings::imports::types::MessageKind as WitKind;
use super::{HostState, Outgoing, SendError};
use crate::telemetry::TraceContext;
use crate::wire::MessageKind;

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
        let mut headers = message.headers;
        // The subscriber learns the sender and attempt from the node, not from the sender.
        crate::call::drop_node_headers(&mut headers);
        self.causation.then(&self.guest.service).stamp(&mut headers);
        let outgoing = Outgoing {
            kind: message.kind.into(),
            key: message.key,
            headers,
            reply_to: message.reply_to,
            body: message.body,
        };
        let queues = self.guest.queues.clone();
        let budget = self.deadline.remaining();
        let sent = queues
            .send(
                &queue,
                &self.guest.service,
                Some(trace.header()),
                outgoing,
                budget,
            )
            .await;
        sent.map_err(Into::into)
    }
}

impl From<WitKind> for MessageKind {
    fn from(kind: WitKind) -> Self {
        match kind {
            WitKind::Document => Self::Document,
            WitKind::Command => Self::Command,
            WitKind::Event => Self::Event,
        }
    }
}

impl From<MessageKind> for WitKind {
    fn from(kind: MessageKind) -> Self {
        match kind {
            MessageKind::Document => Self::Document,
            MessageKind::Command => Self::Command,
            MessageKind::Event => Self::Event,
        }
    }
}

impl From<SendError> for wit::SendError {
    fn from(error: SendError) -> Self {
        match error {
            SendError::UnknownQueue(m) => Self::UnknownQueue(m),
            SendError::Full(m) => Self::Full(m),
            SendError::TooLarge(m) => Self::TooLarge(m),
            SendError::Unavailable(m) => Self::Unavailable(m),
        }
    }
}
