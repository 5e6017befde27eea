//! Serve gRPC methods with typed handlers on [prost](https://docs.rs/prost) messages (feature
//! `grpc`).
//!
//! Route each method in the manifest, `routes = ["grpc /shop.Orders/Place",
//! "grpc /shop.Orders/Watch"]`, generate the message types from the `.proto` at build time
//! (`prost-build` in the guest's `build.rs`), and dispatch on the path:
//!
//! ```ignore
//! use switchyard_sdk::grpc::{self, Status};
//!
//! fn handle(req: Request) -> Result<Response, Error> {
//!     match req.path() {
//!         "/shop.Orders/Place" => grpc::unary(&req, |order: shop::Order, _req| {
//!             if order.items.is_empty() {
//!                 return Err(Status::invalid_argument("an order needs items"));
//!             }
//!             Ok(shop::Placed { id: 7 })
//!         }),
//!         "/shop.Orders/Watch" => grpc::server_streaming(&req, |watch: shop::Watch, out, _req| {
//!             for step in 0..watch.steps {
//!                 out.send(&shop::Progress { step })?; // leaves at once
//!             }
//!             Ok(())
//!         }),
//!         _ => grpc::unimplemented(&req),
//!     }
//! }
//! ```
//!
//! The node does the rest: the client's `grpc-timeout` is the request's
//! [`deadline`](crate::Request::deadline), a [`Status`] becomes the trailers
//! (`grpc-status`, `grpc-message`), and a handler that panics or runs out of time ends the call
//! `INTERNAL` or `DEADLINE_EXCEEDED`. Client metadata is in the request's
//! [headers](crate::Request::header); headers set with [`Status::with_metadata`] or on an
//! answer go back as metadata.

use prost::Message;

use crate::{Error, Request, Response};

/// A gRPC status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs, reason = "the gRPC spec's names")]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

/// How a gRPC method failed: a code, a message for the client, and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    code: Code,
    message: String,
    metadata: Vec<(String, String)>,
}

impl Status {
    /// A status with any code.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            metadata: Vec::new(),
        }
    }

    /// `INVALID_ARGUMENT`: the request is wrong whatever the state.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// `NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    /// `FAILED_PRECONDITION`: not in this state.
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(Code::FailedPrecondition, message)
    }

    /// `UNAVAILABLE`: retry later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, message)
    }

    /// `INTERNAL`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }

    /// Adds a metadata entry the client gets with the status (names are sent lower-case).
    pub fn with_metadata(mut self, name: &str, value: &str) -> Self {
        self.metadata
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// The code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    fn into_response(self) -> Response {
        let mut response = Response::new(200)
            .with_header("content-type", "application/grpc")
            .with_header("grpc-status", &(self.code as u8).to_string())
            .with_header("grpc-message", &self.message);
        for (name, value) in &self.metadata {
            response = response.with_header(name, value);
        }
        response
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for Status {}

/// The one message of a gRPC request (unary and server-streaming methods take one), decoded.
pub fn decode<M: Message + Default>(req: &Request) -> Result<M, Status> {
    decode_framed(req.body())
}

/// One length-prefixed message, decoded.
fn decode_framed<M: Message + Default>(body: &[u8]) -> Result<M, Status> {
    let Some((&compressed, rest)) = body.split_first() else {
        return Err(Status::invalid_argument(
            "the request holds no gRPC message",
        ));
    };
    if compressed == 1 {
        return Err(Status::new(
            Code::Unimplemented,
            "compressed messages are not taken; send them uncompressed (grpc-encoding identity)",
        ));
    }
    let length = rest
        .get(..4)
        .map(|bytes| u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize);
    let message = match length {
        Some(length) if compressed == 0 && rest.len() == 4 + length => &rest[4..],
        _ => {
            return Err(Status::invalid_argument(
                "the request is not exactly one length-prefixed gRPC message",
            ));
        }
    };
    M::decode(message).map_err(|error| {
        Status::invalid_argument(format!(
            "the request message is not a {}: {error}",
            std::any::type_name::<M>()
        ))
    })
}

/// `message` as one length-prefixed gRPC message (uncompressed).
pub fn encode<M: Message>(message: &M) -> Vec<u8> {
    let length = message.encoded_len();
    let mut framed = Vec::with_capacity(5 + length);
    framed.push(0);
    framed.extend_from_slice(&(length as u32).to_be_bytes());
    // Encoding into a Vec cannot run out of room.
    let _ = message.encode(&mut framed);
    framed
}

/// Answers a unary method: `handler` gets the decoded request (and the request, for its
/// metadata and deadline) and returns the answer or a [`Status`].
pub fn unary<In, Out>(
    req: &Request,
    handler: impl FnOnce(In, &Request) -> Result<Out, Status>,
) -> Result<Response, Error>
where
    In: Message + Default,
    Out: Message,
{
    let answer = decode(req).and_then(|input| handler(input, req));
    Ok(match answer {
        Ok(output) => Response::new(200)
            .with_header("content-type", "application/grpc")
            .with_body(encode(&output)),
        Err(status) => status.into_response(),
    })
}

/// Where a server-streaming method sends its answers; each leaves for the client at once.
pub struct Sender {
    sent: usize,
}

impl Sender {
    /// Sends one answer. `Err` (`CANCELLED`) when the client went away: stop producing and
    /// return it with `?`.
    pub fn send<M: Message>(&mut self, message: &M) -> Result<(), Status> {
        let framed = encode(message);
        #[cfg(target_arch = "wasm32")]
        let sent = crate::bindings::switchyard::runtime::grpc::send(&framed);
        #[cfg(not(target_arch = "wasm32"))]
        let sent = crate::testing::grpc_send(framed);
        sent.map_err(|reason| Status::new(Code::Cancelled, reason))?;
        self.sent += 1;
        Ok(())
    }

    /// How many answers were sent.
    pub fn sent(&self) -> usize {
        self.sent
    }
}

/// Answers a server-streaming method: `handler` gets the decoded request and a [`Sender`]
/// for its answers; the [`Status`] it returns ends the call (after the answers sent).
pub fn server_streaming<In>(
    req: &Request,
    handler: impl FnOnce(In, &mut Sender, &Request) -> Result<(), Status>,
) -> Result<Response, Error>
where
    In: Message + Default,
{
    let mut sender = Sender { sent: 0 };
    let outcome = decode(req).and_then(|input| handler(input, &mut sender, req));
    Ok(match outcome {
        Ok(()) => Response::new(200).with_header("content-type", "application/grpc"),
        Err(status) => status.into_response(),
    })
}

/// Calls the unary gRPC method `method` (`/package.Service/Method`) of the mesh service
/// `service` (`"name"` or `"name@<semver range>"`), which serves it on a `grpc` route: through
/// the caller's bound policies, within what is left of the current request's deadline, on
/// this node or another. The callee's [`Status`] comes back as the `Err`; a call that got no
/// answer is `DEADLINE_EXCEEDED`, `UNAVAILABLE`, `PERMISSION_DENIED` (refused by a policy or
/// allow-list) or `INTERNAL`.
pub fn call<In, Out>(service: &str, method: &str, message: &In) -> Result<Out, Status>
where
    In: Message,
    Out: Message + Default,
{
    decode_framed(&answer_of(service, method, message)?)
}

/// Calls the server-streaming gRPC method `method` of `service` as [`call`] does, and returns
/// every message it sent, in order, once it ended: the answer is collected whole (up to
/// 16 MiB) before this returns. A callee that fails midway answers its [`Status`] only.
pub fn call_streaming<In, Out>(
    service: &str,
    method: &str,
    message: &In,
) -> Result<Vec<Out>, Status>
where
    In: Message,
    Out: Message + Default,
{
    let answer = answer_of(service, method, message)?;
    let mut rest = answer.as_slice();
    let mut messages = Vec::new();
    while !rest.is_empty() {
        let length = rest
            .get(1..5)
            .map(|bytes| u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize)
            .filter(|length| rest.len() >= 5 + length)
            .ok_or_else(|| {
                Status::internal(format!(
                    "{service} answered {method} with a message cut short"
                ))
            })?;
        messages.push(decode_framed(&rest[..5 + length])?);
        rest = &rest[5 + length..];
    }
    Ok(messages)
}

/// The framed messages of a successful answer to `method`, or the call's [`Status`].
fn answer_of<In: Message>(service: &str, method: &str, message: &In) -> Result<Vec<u8>, Status> {
    use crate::rpc::CallError;
    let reply = crate::rpc::Call::new(service, &format!("GRPC {method}"))
        .header("content-type", "application/grpc")
        .body(encode(message))
        .send()
        .map_err(|error| match error {
            CallError::Timeout => Status::new(
                Code::DeadlineExceeded,
                format!("{service} did not answer {method} in time"),
            ),
            CallError::Unavailable(why) => Status::new(Code::Unavailable, why),
            CallError::Rejected(why) => Status::new(Code::PermissionDenied, why),
            CallError::Remote(why) => Status::new(Code::Internal, why),
            CallError::BadRequest(why) => Status::new(Code::Internal, why),
        })?;
    let code = match reply.header("grpc-status") {
        Some(number) => code_of(number),
        None if reply.status() == 200 => Code::Ok,
        None => Code::Unknown,
    };
    if code != Code::Ok {
        let message = reply
            .header("grpc-message")
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(reply.body()).trim().to_owned());
        return Err(Status::new(code, message));
    }
    Ok(reply.into_body())
}

fn code_of(number: &str) -> Code {
    const CODES: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];
    number
        .trim()
        .parse::<usize>()
        .ok()
        .and_then(|index| CODES.get(index).copied())
        .unwrap_or(Code::Unknown)
}

/// Answers a method this service does not implement: `UNIMPLEMENTED`, naming it.
pub fn unimplemented(req: &Request) -> Result<Response, Error> {
    Ok(Status::new(
        Code::Unimplemented,
        format!("this service does not implement {}", req.path()),
    )
    .into_response())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Order {
        #[prost(string, tag = "1")]
        item: String,
        #[prost(uint32, tag = "2")]
        count: u32,
    }

    fn grpc_request(body: Vec<u8>) -> Request {
        Request::builder("POST", "/shop.Orders/Place")
            .header("content-type", "application/grpc")
            .body(body)
            .build()
    }

    #[test]
    fn a_unary_answer_is_framed_and_a_status_is_in_its_headers() {
        let order = Order {
            item: "tea".into(),
            count: 2,
        };
        let response = unary(&grpc_request(encode(&order)), |order: Order, _| {
            Ok(Order {
                count: order.count * 10,
                ..order
            })
        })
        .unwrap();
        assert_eq!(response.status(), 200);
        let answer = Request::builder("POST", "/")
            .body(response.body().to_vec())
            .build();
        assert_eq!(decode::<Order>(&answer).unwrap().count, 20);

        let refused = unary(
            &grpc_request(encode(&order)),
            |_: Order, _| -> Result<Order, _> {
                Err(Status::not_found("no tea").with_metadata("X-Shop", "1"))
            },
        )
        .unwrap();
        assert_eq!(refused.header("grpc-status"), Some("5"));
        assert_eq!(refused.header("grpc-message"), Some("no tea"));
        assert_eq!(refused.header("x-shop"), Some("1"));
    }

    #[test]
    fn a_request_that_is_not_one_plain_message_is_refused_with_the_reason() {
        let framed = encode(&Order::default());
        let mut two = framed.clone();
        two.extend_from_slice(&framed);
        let mut compressed = framed.clone();
        compressed[0] = 1;
        for (body, code) in [
            (Vec::new(), Code::InvalidArgument),
            (two, Code::InvalidArgument),
            (vec![0, 0, 0, 0, 9, 1], Code::InvalidArgument),
            (compressed, Code::Unimplemented),
            (vec![0, 0, 0, 0, 2, 0xff, 0xff], Code::InvalidArgument),
        ] {
            assert_eq!(
                decode::<Order>(&grpc_request(body)).unwrap_err().code(),
                code
            );
        }
    }

    #[test]
    fn a_mesh_call_decodes_the_answer_and_brings_back_the_callee_status() {
        crate::testing::reset();
        let order = Order {
            item: "tea".into(),
            count: 1,
        };
        crate::testing::reply("stock", "GRPC /shop.Stock/Take", 200, encode(&order));
        let taken: Order = super::call("stock", "/shop.Stock/Take", &order).unwrap();
        assert_eq!(taken, order);
        let calls = crate::testing::calls();
        assert_eq!(calls[0].method, "GRPC /shop.Stock/Take");
        crate::testing::fail(
            "stock",
            "GRPC /shop.Stock/Take",
            crate::rpc::CallError::Timeout,
        );
        let late = super::call::<_, Order>("stock", "/shop.Stock/Take", &order).unwrap_err();
        assert_eq!(late.code(), Code::DeadlineExceeded);
    }

    #[test]
    fn a_streaming_call_decodes_every_message_and_refuses_a_cut_one() {
        crate::testing::reset();
        let answers: Vec<u8> = (1..=3)
            .flat_map(|count| {
                encode(&Order {
                    item: "tea".into(),
                    count,
                })
            })
            .collect();
        crate::testing::reply("stock", "GRPC /shop.Stock/Watch", 200, answers.clone());
        let seen: Vec<Order> =
            call_streaming("stock", "/shop.Stock/Watch", &Order::default()).unwrap();
        assert_eq!(
            seen.iter().map(|order| order.count).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        crate::testing::reply("stock", "GRPC /shop.Stock/Watch", 200, Vec::new());
        let none: Vec<Order> =
            call_streaming("stock", "/shop.Stock/Watch", &Order::default()).unwrap();
        assert!(none.is_empty());
        crate::testing::reply(
            "stock",
            "GRPC /shop.Stock/Watch",
            200,
            answers[..answers.len() - 1].to_vec(),
        );
        let cut = call_streaming::<_, Order>("stock", "/shop.Stock/Watch", &Order::default())
            .unwrap_err();
        assert_eq!(cut.code(), Code::Internal);
        assert!(cut.message().contains("cut short"), "{cut}");
    }

    #[test]
    fn a_stream_sends_each_answer_and_ends_with_the_status() {
        crate::testing::reset();
        let response = server_streaming(
            &grpc_request(encode(&Order::default())),
            |_: Order, out, _| {
                for count in 1..=3 {
                    out.send(&Order {
                        item: "tea".into(),
                        count,
                    })?;
                }
                Ok(())
            },
        )
        .unwrap();
        assert!(response.body().is_empty());
        let sent = crate::testing::grpc_sent();
        assert_eq!(sent.len(), 3);
        let last = Request::builder("POST", "/").body(sent[2].clone()).build();
        assert_eq!(decode::<Order>(&last).unwrap().count, 3);
    }
}
