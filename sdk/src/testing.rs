//! Host-side fakes, so handlers can be unit-tested with `cargo test` on the host.
//!
//! On `wasm32` the SDK's functions call the node. Built for the host (what `cargo test` runs),
//! they call these fakes instead of aborting: set the config a handler reads, script what a
//! call or a request answers, and look at what the handler logged, called and sent. The
//! fakes are per thread (each `#[test]` runs on its own thread), so tests do not see each
//! other's; [`reset`] clears them within one.
//!
//! ```
//! use switchyard_sdk::{Request, Response, rpc, testing};
//!
//! fn handle(req: Request) -> Result<Response, switchyard_sdk::Error> {
//!     let greeting = switchyard_sdk::config::get("greeting").unwrap_or("Hello".into());
//!     let stock = rpc::Call::new("inventory", "GET /items/42").send()?;
//!     switchyard_sdk::messaging::send("audit", "served")?;
//!     Ok(Response::text(format!("{greeting}: {}", stock.text()?)))
//! }
//!
//! testing::set_config("greeting", "Hi");
//! testing::reply("inventory", "GET /items/42", 200, "3 left");
//! let response = handle(Request::builder("GET", "/").build()).unwrap();
//! assert_eq!(response.body(), b"Hi: 3 left");
//! assert_eq!(testing::calls()[0].service, "inventory");
//! assert_eq!(testing::sent()[0].destination, "audit");
//! ```
//!
//! A call nobody scripted answers `unavailable` naming what to script; a request with no
//! scripted reply times out; sends and publishes succeed (a publish's offset counts up).

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::bindings::switchyard::runtime::discovery::Instance;
use crate::bindings::switchyard::runtime::log::Level;
use crate::bindings::switchyard::runtime::messaging::{OutgoingMessage, RequestError, SendError};
use crate::bindings::switchyard::runtime::rpc::{CallError, Reply};
use crate::bindings::switchyard::runtime::types::Message;

/// A call the handler made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCall {
    pub service: String,
    pub method: String,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// How a message left the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SentAs {
    Send,
    Publish,
    Request,
    RequestAll,
    Reply,
}

/// A message the handler sent, published, asked with or replied with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    pub destination: String,
    pub how: SentAs,
    pub key: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

type Answer = Result<Reply, CallError>;

#[derive(Default)]
struct Fakes {
    config: BTreeMap<String, String>,
    answers: BTreeMap<(String, String), Answer>,
    calls: Vec<RecordedCall>,
    sent: Vec<SentMessage>,
    replies: BTreeMap<String, Vec<Vec<u8>>>,
    topics: BTreeMap<String, Vec<Vec<u8>>>,
    instances: BTreeMap<String, Vec<Instance>>,
    logs: Vec<(Level, String)>,
    published: u64,
    #[cfg(feature = "grpc")]
    grpc_sent: Vec<Vec<u8>>,
}

thread_local! {
    static FAKES: RefCell<Fakes> = RefCell::new(Fakes::default());
}

fn with<T>(f: impl FnOnce(&mut Fakes) -> T) -> T {
    FAKES.with(|fakes| f(&mut fakes.borrow_mut()))
}

/// Forgets everything set and recorded on this thread.
pub fn reset() {
    with(|fakes| *fakes = Fakes::default());
}

/// What `config::get(key)` answers.
pub fn set_config(key: &str, value: &str) {
    with(|fakes| fakes.config.insert(key.to_owned(), value.to_owned()));
}

/// What a call to `service` with `method` (`"GET /items/42"`, exactly as the handler writes
/// it; a `@range` in the service is ignored) answers.
pub fn reply(service: &str, method: &str, status: u16, body: impl Into<Vec<u8>>) {
    let reply = Reply {
        status,
        headers: Vec::new(),
        body: body.into(),
    };
    with(|fakes| {
        fakes
            .answers
            .insert((service.to_owned(), method.to_owned()), Ok(reply))
    });
}

/// Makes a call to `service` with `method` fail with `error`.
pub fn fail(service: &str, method: &str, error: CallError) {
    with(|fakes| {
        fakes
            .answers
            .insert((service.to_owned(), method.to_owned()), Err(error))
    });
}

/// The replies a request to `destination` gets, in order (`request` takes the first,
/// `request_all` all of them).
pub fn replies_to(destination: &str, bodies: Vec<Vec<u8>>) {
    with(|fakes| fakes.replies.insert(destination.to_owned(), bodies));
}

/// The stored messages `messaging::read(topic, ..)` reads (offsets are their positions).
pub fn topic_history(topic: &str, bodies: Vec<Vec<u8>>) {
    with(|fakes| fakes.topics.insert(topic.to_owned(), bodies));
}

/// What `discovery::resolve(service)` answers.
pub fn instances(service: &str, instances: Vec<Instance>) {
    with(|fakes| fakes.instances.insert(service.to_owned(), instances));
}

/// The calls made so far, in order.
pub fn calls() -> Vec<RecordedCall> {
    with(|fakes| fakes.calls.clone())
}

/// The messages sent so far, in order.
pub fn sent() -> Vec<SentMessage> {
    with(|fakes| fakes.sent.clone())
}

/// The framed gRPC messages a server-streaming handler sent so far, in order.
#[cfg(feature = "grpc")]
pub fn grpc_sent() -> Vec<Vec<u8>> {
    with(|fakes| fakes.grpc_sent.clone())
}

#[cfg(feature = "grpc")]
pub(crate) fn grpc_send(framed: Vec<u8>) -> Result<(), String> {
    with(|fakes| fakes.grpc_sent.push(framed));
    Ok(())
}

/// The lines logged so far, in order.
pub fn logs() -> Vec<(Level, String)> {
    with(|fakes| fakes.logs.clone())
}

// What the SDK's functions call on the host.

pub(crate) fn config_get(key: &str) -> Option<String> {
    with(|fakes| fakes.config.get(key).cloned())
}

pub(crate) fn config_all() -> Vec<(String, String)> {
    with(|fakes| {
        fakes
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    })
}

pub(crate) fn log(level: Level, message: &str) {
    with(|fakes| fakes.logs.push((level, message.to_owned())));
}

pub(crate) fn resolve(service: &str) -> Result<Vec<Instance>, String> {
    let name = service.split('@').next().unwrap_or(service);
    Ok(with(|fakes| {
        fakes.instances.get(name).cloned().unwrap_or_default()
    }))
}

pub(crate) fn call(
    service: &str,
    method: &str,
    body: &[u8],
    headers: &[(String, String)],
) -> Answer {
    let name = service.split('@').next().unwrap_or(service);
    with(|fakes| {
        fakes.calls.push(RecordedCall {
            service: service.to_owned(),
            method: method.to_owned(),
            body: body.to_vec(),
            headers: headers.to_vec(),
        });
        fakes
            .answers
            .get(&(name.to_owned(), method.to_owned()))
            .cloned()
            .unwrap_or_else(|| {
                Err(CallError::Unavailable(format!(
                    "no fake answer for {name} `{method}`: script one with \
                     switchyard_sdk::testing::reply(\"{name}\", \"{method}\", 200, ...)"
                )))
            })
    })
}

fn record(destination: &str, how: SentAs, message: &OutgoingMessage) {
    with(|fakes| {
        fakes.sent.push(SentMessage {
            destination: destination.to_owned(),
            how,
            key: message.key.clone(),
            headers: message.headers.clone(),
            body: message.body.clone(),
        })
    });
}

pub(crate) fn send(queue: &str, message: &OutgoingMessage) -> Result<String, SendError> {
    record(queue, SentAs::Send, message);
    Ok(format!("{queue}-{}", with(|fakes| fakes.sent.len())))
}

pub(crate) fn publish(topic: &str, message: &OutgoingMessage) -> Result<u64, SendError> {
    record(topic, SentAs::Publish, message);
    Ok(with(|fakes| {
        fakes.published += 1;
        fakes.published - 1
    }))
}

pub(crate) fn reply_with(to: &str, message: &OutgoingMessage) -> Result<(), SendError> {
    record(to, SentAs::Reply, message);
    Ok(())
}

fn message(topic: &str, n: usize, body: Vec<u8>) -> Message {
    Message {
        id: format!("{topic}-{n}"),
        kind: crate::MessageKind::Event,
        topic: topic.to_owned(),
        key: None,
        headers: Vec::new(),
        reply_to: None,
        trace_context: None,
        body,
    }
}

pub(crate) fn request(
    destination: &str,
    message_out: &OutgoingMessage,
) -> Result<Message, RequestError> {
    record(destination, SentAs::Request, message_out);
    with(|fakes| {
        fakes
            .replies
            .get(destination)
            .and_then(|bodies| bodies.first().cloned())
    })
    .map(|body| message(destination, 0, body))
    .ok_or_else(|| {
        RequestError::Timeout(format!(
            "no fake reply to `{destination}`: script one with \
             switchyard_sdk::testing::replies_to(\"{destination}\", vec![...])"
        ))
    })
}

pub(crate) fn request_all(topic: &str, message_out: &OutgoingMessage) -> Vec<Message> {
    record(topic, SentAs::RequestAll, message_out);
    with(|fakes| fakes.replies.get(topic).cloned().unwrap_or_default())
        .into_iter()
        .enumerate()
        .map(|(n, body)| message(topic, n, body))
        .collect()
}

pub(crate) fn read(topic: &str, from: u64, max: u32) -> Vec<Message> {
    with(|fakes| fakes.topics.get(topic).cloned().unwrap_or_default())
        .into_iter()
        .enumerate()
        .skip(usize::try_from(from).unwrap_or(usize::MAX))
        .take(max as usize)
        .map(|(n, body)| message(topic, n, body))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{messaging, rpc};

    #[test]
    fn calls_answer_as_scripted_and_are_recorded() {
        reply("inventory", "GET /items/1", 200, "one");
        fail("payments", "POST /pay", CallError::Timeout);
        let call = rpc::Call::new("inventory@^1", "GET /items/1")
            .header("x-a", "b")
            .send();
        assert_eq!(call.map(|r| r.body().to_vec()).ok(), Some(b"one".to_vec()));
        assert!(matches!(
            rpc::Call::new("payments", "POST /pay").send(),
            Err(CallError::Timeout)
        ));
        match rpc::Call::new("shipping", "GET /").send() {
            Err(CallError::Unavailable(why)) => assert!(why.contains("testing::reply"), "{why}"),
            other => panic!("{other:?}"),
        }
        let started = vec![
            rpc::Call::new("payments", "POST /pay").start(),
            rpc::Call::new("inventory", "GET /items/1").start(),
        ];
        assert_eq!(rpc::wait_any(&started), 0);
        assert_eq!(rpc::wait_all(started).len(), 2);
        let made = calls();
        assert_eq!(made.len(), 5);
        assert_eq!(made[0].service, "inventory@^1");
        assert_eq!(made[0].headers, [("x-a".to_owned(), "b".to_owned())]);
    }

    #[test]
    fn messages_are_captured_and_requests_get_scripted_replies() {
        assert!(messaging::send("jobs", "one").is_ok());
        assert_eq!(messaging::publish("events", "a").ok(), Some(0));
        assert_eq!(messaging::publish("events", "b").ok(), Some(1));
        assert!(matches!(
            messaging::request("prices", "sku-1", std::time::Duration::from_secs(1)),
            Err(RequestError::Timeout(_))
        ));
        replies_to("prices", vec![b"12".to_vec(), b"13".to_vec()]);
        let first = messaging::request("prices", "sku-1", std::time::Duration::from_secs(1));
        assert_eq!(first.map(|m| m.body().to_vec()).ok(), Some(b"12".to_vec()));
        let all = messaging::Message::new("sku-1")
            .request_all("prices", std::time::Duration::from_millis(10));
        assert_eq!(all.map(|m| m.len()).ok(), Some(2));
        topic_history(
            "orders",
            vec![b"o1".to_vec(), b"o2".to_vec(), b"o3".to_vec()],
        );
        let read = messaging::read("orders", 1, 10).unwrap_or_default();
        assert_eq!(
            read.iter().map(|m| m.body().to_vec()).collect::<Vec<_>>(),
            [b"o2".to_vec(), b"o3".to_vec()]
        );
        let sent = sent();
        assert_eq!(sent.len(), 6);
        assert_eq!(
            (sent[0].destination.as_str(), sent[0].how),
            ("jobs", SentAs::Send)
        );
        assert_eq!(sent[5].how, SentAs::RequestAll);
        reset();
        assert!(super::sent().is_empty());
    }

    #[test]
    fn config_logs_and_discovery_are_fakes_too() {
        set_config("greeting", "Hi");
        assert_eq!(crate::config::get("greeting").as_deref(), Some("Hi"));
        assert_eq!(crate::config::get("other"), None);
        crate::log::info!("served {}", 3);
        assert_eq!(logs(), [(Level::Info, "served 3".to_owned())]);
        instances(
            "inventory",
            vec![Instance {
                node: "n1".into(),
                local: true,
                address: None,
                version: "1.0.0".into(),
            }],
        );
        assert_eq!(
            crate::discovery::resolve("inventory@^1").map(|i| i.len()),
            Ok(1)
        );
        assert_eq!(crate::discovery::resolve("nobody").map(|i| i.len()), Ok(0));
    }
}
