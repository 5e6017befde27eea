//! `switchyard:runtime/messaging`: durable sends and publishes, reads of history, requests
//! and replies through the [`super::Queues`] port.

use std::time::Duration;

use super::bindings::imports::messaging::{self as wit, OutgoingMessage};
use super::bindings::imports::types::MessageKind as WitKind;
use super::{GuestMessage, HostState, Outgoing, Receipt, RequestError, SendError};
use crate::telemetry::{KeyValue, Span, SpanKind};
use crate::wire::{MessageKind, StoredMessage};

/// The largest message body a queue takes.
const MAX_BODY_BYTES: usize = 1024 * 1024;

impl HostState {
    /// `message` as the node sends it to `to` for this guest: its size checked, the sender's
    /// node headers dropped and this node's causation set; with the producer span its
    /// `operation` (`send`, `publish`, ...) runs in, whose context the message carries.
    pub(super) fn outgoing(
        &self,
        operation: &'static str,
        to: &str,
        message: OutgoingMessage,
    ) -> Result<(Outgoing, Span), wit::SendError> {
        if message.body.len() > MAX_BODY_BYTES {
            return Err(wit::SendError::TooLarge(format!(
                "a message to `{to}` has a body of {} bytes; a queue takes at most \
                 {MAX_BODY_BYTES} (store large payloads elsewhere and send a reference)",
                message.body.len()
            )));
        }
        let span = self.guest.traces.start(
            || format!("{operation} {to}").into(),
            SpanKind::Producer,
            self.span.trace(),
            || {
                vec![
                    KeyValue::new("messaging.operation.name", operation),
                    KeyValue::new("messaging.destination.name", to.to_owned()),
                    KeyValue::new("switchyard.service", self.guest.service.clone()),
                ]
            },
        );
        let mut headers = message.headers;
        // The subscriber learns the sender and attempt from the node, not from the sender.
        crate::call::drop_node_headers(&mut headers);
        self.causation.then(&self.guest.service).stamp(&mut headers);
        let outgoing = Outgoing {
            id: None,
            kind: message.kind.into(),
            key: message.key,
            headers,
            reply_to: message.reply_to,
            body: message.body,
        };
        Ok((outgoing, span))
    }

    /// `send` and `publish`: appends `message` to `to` within the guest's deadline.
    async fn append(
        &mut self,
        operation: &'static str,
        to: &str,
        message: OutgoingMessage,
    ) -> Result<Receipt, wit::SendError> {
        let (outgoing, span) = self.outgoing(operation, to, message)?;
        let queues = self.guest.queues.clone();
        let budget = self.deadline.remaining();
        let sent = queues
            .send(
                to,
                &self.guest.service,
                Some(span.trace().header()),
                outgoing,
                budget,
            )
            .await;
        if let Err(err) = &sent {
            span.fail(|| err.to_string());
        }
        Ok(sent?)
    }
}

impl wit::Host for HostState {
    async fn send(
        &mut self,
        queue: String,
        message: OutgoingMessage,
    ) -> Result<String, wit::SendError> {
        self.append("send", &queue, message)
            .await
            .map(|receipt| receipt.id)
    }

    async fn publish(
        &mut self,
        topic: String,
        message: OutgoingMessage,
    ) -> Result<u64, wit::SendError> {
        self.append("publish", &topic, message)
            .await
            .map(|receipt| receipt.offset)
    }

    async fn read(
        &mut self,
        topic: String,
        from: u64,
        max: u32,
    ) -> Result<Vec<GuestMessage>, wit::SendError> {
        let queues = self.guest.queues.clone();
        let budget = self.deadline.remaining();
        let (messages, _next) = queues.read(&topic, from, max as usize, budget).await?;
        Ok(messages
            .iter()
            .map(|message| guest_message(&topic, message, Received::Read))
            .collect())
    }

    async fn request_all(
        &mut self,
        topic: String,
        message: OutgoingMessage,
        window_ms: u32,
    ) -> Result<Vec<GuestMessage>, wit::RequestError> {
        let (outgoing, span) = self
            .outgoing("request-all", &topic, message)
            .map_err(wit::RequestError::NotSent)?;
        let queues = self.guest.queues.clone();
        let window = Duration::from_millis(u64::from(window_ms)).min(self.deadline.remaining());
        let replied = queues
            .request_all(
                &topic,
                &self.guest.service,
                Some(span.trace().header()),
                outgoing,
                window,
            )
            .await;
        Ok(replied?
            .iter()
            .map(|reply| guest_message(&topic, reply, Received::Reply))
            .collect())
    }

    async fn request(
        &mut self,
        destination: String,
        message: OutgoingMessage,
        timeout_ms: u32,
    ) -> Result<GuestMessage, wit::RequestError> {
        let (outgoing, span) = self
            .outgoing("request", &destination, message)
            .map_err(wit::RequestError::NotSent)?;
        let queues = self.guest.queues.clone();
        let timeout = Duration::from_millis(u64::from(timeout_ms)).min(self.deadline.remaining());
        let replied = queues
            .request(
                &destination,
                &self.guest.service,
                Some(span.trace().header()),
                outgoing,
                timeout,
            )
            .await;
        Ok(guest_message(&destination, &replied?, Received::Reply))
    }

    async fn reply(&mut self, to: String, message: OutgoingMessage) -> Result<(), wit::SendError> {
        let (outgoing, span) = self.outgoing("reply", &to, message)?;
        let queues = self.guest.queues.clone();
        let budget = self.deadline.remaining();
        let replied = queues
            .reply(
                &to,
                &self.guest.service,
                Some(span.trace().header()),
                outgoing,
                budget,
            )
            .await;
        replied.map_err(Into::into)
    }
}

/// How a guest came to get a message.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Received {
    /// Delivered to its subscriber, the `attempt`-th time.
    Delivery { attempt: u32 },
    /// Read from a topic's history.
    Read,
    /// A reply to its request.
    Reply,
}

/// The `message` record a guest gets for `message` of `topic` (a queue or topic, or the
/// destination a reply answers), with the node's own headers: the sender; for a delivery its
/// attempt; for a delivered or read message its offset and when it was stored.
pub(crate) fn guest_message(
    topic: &str,
    message: &StoredMessage,
    received: Received,
) -> GuestMessage {
    let mut headers = message.headers.clone();
    // Logs written before senders' node headers were dropped may still hold some.
    headers.retain(|(name, _)| {
        !crate::call::is_node_header(name)
            || name == "x-switchyard-redriven-from"
            || name == crate::wire::CAUSATION_DEPTH_HEADER
            || name == crate::wire::CAUSATION_CHAIN_HEADER
    });
    if let Received::Delivery { attempt } = received {
        headers.push(("x-switchyard-attempt".into(), attempt.to_string()));
    }
    if let Received::Delivery { .. } | Received::Read = received {
        headers.push(("x-switchyard-offset".into(), message.seq.to_string()));
        headers.push((
            "x-switchyard-timestamp".into(),
            message.sent_at_ms.to_string(),
        ));
    }
    headers.push(("x-switchyard-sender".into(), message.sender.clone()));
    GuestMessage {
        id: message.id.clone(),
        kind: message.kind.into(),
        topic: topic.to_owned(),
        key: message.key.clone(),
        headers,
        reply_to: message.reply_to.clone(),
        trace_context: message.trace_context.clone(),
        body: message.body.clone(),
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

impl From<RequestError> for wit::RequestError {
    fn from(error: RequestError) -> Self {
        match error {
            RequestError::NotSent(error) => Self::NotSent(error.into()),
            RequestError::Timeout(why) => Self::Timeout(why),
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
