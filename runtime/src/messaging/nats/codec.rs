//! Where a message goes in NATS and how it looks there: the body is the payload (so any NATS
//! client reads it as it was sent), the id is `Nats-Msg-Id` (JetStream stores a message sent
//! twice with one id once), and the rest of the header rides in one `Switchyard-Meta` header.

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, NATS_MESSAGE_ID};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::wire::{MessageKind, StoredMessage};

/// JetStream's de-duplication header. Names are `HeaderName`s, not `&str`s: async-nats
/// reads `Nats-Msg-Id` off the wire as its standard name, which a name made from a `&str`
/// does not equal (and a `&str` name is allocated at every use).
pub(super) const MSG_ID: HeaderName = NATS_MESSAGE_ID;
/// The rest of a message's header: `FORMAT.` then base64 of postcard.
const META: HeaderName = HeaderName::from_static("Switchyard-Meta");
/// The layout of `Switchyard-Meta` (and `Switchyard-Dead`); a node refuses, by name, one it
/// does not know rather than misreading it.
const FORMAT: &str = "1";
/// Why a dead letter is one, beside its `Switchyard-Meta`.
const DEAD: HeaderName = HeaderName::from_static("Switchyard-Dead");

/// The stream of queue or topic `name`.
pub(super) fn stream(name: &str) -> String {
    format!("sy-{name}")
}

/// The subjects of queue or topic `name`: one per key, so that a compacted topic keeps the
/// latest message per subject, i.e. per key.
pub(super) fn subjects(name: &str) -> String {
    format!("sy.{name}.>")
}

/// The subject a message of `key` is published on. A key may hold any character, a subject
/// token only some: the key goes as hex.
pub(super) fn subject(name: &str, key: Option<&str>) -> String {
    match key {
        None => format!("sy.{name}.n"),
        Some(key) => format!("sy.{name}.k{}", hex::encode(key)),
    }
}

/// Whether a message on `subject` has a key (its order matters with `ordered_by_key`).
pub(super) fn keyed(subject: &str) -> bool {
    subject
        .rsplit('.')
        .next()
        .is_some_and(|token| token.starts_with('k'))
}

/// The dead-letter stream of queue or topic `name`, and the subject of a subscription's.
pub(super) fn dead_stream(name: &str) -> String {
    format!("sy-dead-{name}")
}

pub(super) fn dead_subjects(name: &str) -> String {
    format!("sy-dead.{name}.>")
}

pub(super) fn dead_subject(name: &str, service: &str) -> String {
    format!("sy-dead.{name}.{service}")
}

/// What a message carries besides its body, as its `Switchyard-Meta` header holds it.
#[derive(Serialize, Deserialize)]
struct Meta {
    id: String,
    kind: MessageKind,
    key: Option<String>,
    headers: Vec<(String, String)>,
    reply_to: Option<String>,
    trace_context: Option<String>,
    sender: String,
    sent_at_ms: u64,
}

/// [`Meta`] borrowed from the message it is written for: the same fields in the same order,
/// so the same bytes (postcard writes a `&str` as it writes a `String`, a slice as a `Vec`).
#[derive(Serialize)]
struct MetaOf<'a> {
    id: &'a str,
    kind: MessageKind,
    key: Option<&'a str>,
    headers: &'a [(String, String)],
    reply_to: Option<&'a str>,
    trace_context: Option<&'a str>,
    sender: &'a str,
    sent_at_ms: u64,
}

/// Why a message was dead-lettered, kept with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct DeadInfo {
    pub(super) subscriber: String,
    pub(super) attempts: u32,
    pub(super) reason: String,
    pub(super) last_error: String,
}

/// The headers and payload of `message`.
pub(super) fn encode(message: &StoredMessage) -> (HeaderMap, bytes::Bytes) {
    let meta = MetaOf {
        id: &message.id,
        kind: message.kind,
        key: message.key.as_deref(),
        headers: &message.headers,
        reply_to: message.reply_to.as_deref(),
        trace_context: message.trace_context.as_deref(),
        sender: &message.sender,
        sent_at_ms: message.sent_at_ms,
    };
    let mut headers = HeaderMap::new();
    headers.insert(MSG_ID, message.id.clone());
    headers.insert(META, packed(&meta));
    (headers, bytes::Bytes::copy_from_slice(&message.body))
}

/// `message` as a dead letter of `dead.subscriber`; its `Nats-Msg-Id` names the subscription,
/// so that each subscription's dead letter of one message is kept, once.
pub(super) fn encode_dead(message: &StoredMessage, dead: &DeadInfo) -> (HeaderMap, bytes::Bytes) {
    let (mut headers, body) = encode(message);
    headers.insert(
        MSG_ID,
        format!("{}/{}/{}", dead.subscriber, message.seq, message.id),
    );
    headers.insert(DEAD, packed(dead));
    (headers, body)
}

fn packed<T: Serialize>(value: &T) -> String {
    // Serializing these owned strings and numbers into a Vec cannot fail.
    let bytes = postcard::to_stdvec(value).unwrap_or_default();
    let mut text = String::with_capacity(FORMAT.len() + 1 + bytes.len().div_ceil(3) * 4);
    text.push_str(FORMAT);
    text.push('.');
    base64::engine::general_purpose::STANDARD_NO_PAD.encode_string(bytes, &mut text);
    text
}

fn unpacked<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, String> {
    let Some((FORMAT, packed)) = text.split_once('.') else {
        return Err(format!(
            "format {:?}, this node reads format {FORMAT} (a newer switchyard wrote it?)",
            text.split_once('.').map_or(text, |(format, _)| format)
        ));
    };
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(packed)
        .map_err(|err| err.to_string())?;
    postcard::from_bytes(&bytes).map_err(|err| err.to_string())
}

/// The message stored at stream sequence `seq` (offset `seq - 1`). A message published by
/// another NATS client (no `Switchyard-Meta`) is an event with its payload as body.
pub(super) fn decode(
    seq: u64,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<StoredMessage, String> {
    let meta = headers.and_then(|headers| headers.get(META));
    let meta: Meta = match meta {
        Some(meta) => unpacked(meta.as_str())
            .map_err(|err| format!("its `{META}` header is not switchyard's: {err}"))?,
        None => Meta {
            id: headers
                .and_then(|headers| headers.get(MSG_ID))
                .map_or_else(|| format!("nats-{seq}"), |id| id.as_str().to_owned()),
            kind: MessageKind::Event,
            key: None,
            headers: Vec::new(),
            reply_to: None,
            trace_context: None,
            sender: "nats".to_owned(),
            sent_at_ms: 0,
        },
    };
    Ok(StoredMessage {
        seq: seq.saturating_sub(1),
        id: meta.id,
        kind: meta.kind,
        key: meta.key,
        headers: meta.headers,
        reply_to: meta.reply_to,
        trace_context: meta.trace_context,
        body: payload.to_vec(),
        sender: meta.sender,
        sent_at_ms: meta.sent_at_ms,
    })
}

/// Why a dead letter is one, if `headers` say.
pub(super) fn decode_dead(headers: Option<&HeaderMap>) -> Option<DeadInfo> {
    unpacked(headers?.get(DEAD)?.as_str()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> StoredMessage {
        StoredMessage {
            seq: 41,
            id: "abc-1".into(),
            kind: MessageKind::Command,
            key: Some("order 7/é".into()),
            headers: vec![("x-a".into(), "line\r\nbreak".into())],
            reply_to: Some("_INBOX.x".into()),
            trace_context: Some("00-1-2-01".into()),
            body: b"hello".to_vec(),
            sender: "orders".into(),
            sent_at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn a_message_comes_back_as_it_went_whatever_its_headers_hold() {
        let sent = message();
        let (headers, payload) = encode(&sent);
        assert_eq!(&payload[..], b"hello", "the body is the payload");
        assert_eq!(headers.get(MSG_ID).map(|id| id.as_str()), Some("abc-1"));
        assert_eq!(decode(42, Some(&headers), &payload), Ok(sent.clone()));
        let dead = DeadInfo {
            subscriber: "billing".into(),
            attempts: 3,
            reason: "gave up".into(),
            last_error: "boom".into(),
        };
        let (headers, payload) = encode_dead(&sent, &dead);
        assert_eq!(decode(42, Some(&headers), &payload), Ok(sent));
        assert_eq!(decode_dead(Some(&headers)), Some(dead));
        assert_eq!(
            headers.get(MSG_ID).map(|id| id.as_str()),
            Some("billing/41/abc-1")
        );
    }

    #[test]
    fn the_meta_header_is_written_as_an_owned_meta_would_be() {
        // What nodes of earlier builds wrote (and every node reads): the owned layout.
        let sent = message();
        let owned = Meta {
            id: sent.id.clone(),
            kind: sent.kind,
            key: sent.key.clone(),
            headers: sent.headers.clone(),
            reply_to: sent.reply_to.clone(),
            trace_context: sent.trace_context.clone(),
            sender: sent.sender.clone(),
            sent_at_ms: sent.sent_at_ms,
        };
        let (headers, _) = encode(&sent);
        assert_eq!(
            headers.get(META).map(|meta| meta.as_str().to_owned()),
            Some(packed(&owned))
        );
    }

    #[test]
    fn a_foreign_message_is_an_event_and_a_broken_header_is_named() {
        let plain = decode(5, None, b"raw").unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(
            (plain.seq, plain.id.as_str(), plain.kind),
            (4, "nats-5", MessageKind::Event)
        );
        // Another client's id, named as async-nats names a header it reads off the wire.
        let mut headers = HeaderMap::new();
        let name: HeaderName = "Nats-Msg-Id".parse().unwrap_or(META);
        headers.insert(name, "order-7");
        let theirs = decode(6, Some(&headers), b"raw").unwrap_or_else(|err| panic!("{err}"));
        assert_eq!((theirs.seq, theirs.id.as_str()), (5, "order-7"));
        let mut headers = HeaderMap::new();
        headers.insert(META, "1.!!");
        let err = decode(5, Some(&headers), b"").err().unwrap_or_default();
        assert!(err.contains("Switchyard-Meta"), "{err}");
        headers.insert(META, "2.AAAA");
        let err = decode(5, Some(&headers), b"").err().unwrap_or_default();
        assert!(
            err.contains("format \"2\", this node reads format 1"),
            "{err}"
        );
    }

    #[test]
    fn keys_become_subject_tokens() {
        assert_eq!(subject("orders", None), "sy.orders.n");
        assert_eq!(subject("orders", Some("a.b *>")), "sy.orders.k612e62202a3e");
        assert_eq!(subject("orders", Some("")), "sy.orders.k");
        assert!(keyed(&subject("orders", Some("a"))) && keyed(&subject("k", Some(""))));
        assert!(!keyed(&subject("k", None)) && !keyed(&subject("kind.k", None)));
    }
}
