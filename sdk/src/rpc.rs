//! Calls to other services, through the node.
//!
//! ```no_run
//! use std::time::Duration;
//! use switchyard_sdk::{rpc, Error, Request, Response};
//!
//! fn checkout(req: Request) -> Result<Response, Error> {
//!     // One call: `?` turns a failed call into 503/504/502 for our own client.
//!     let stock = rpc::Call::new("inventory@^1", "GET /items/42").send()?;
//!
//!     // Fan out: both run at once; this takes as long as the slower one.
//!     let price = rpc::Call::new("pricing", "GET /price/42").timeout(Duration::from_millis(200)).start();
//!     let tax = rpc::Call::new("tax", "GET /rate/fr").start();
//!     let (price, tax) = (price.wait()?, tax.wait()?);
//!     Ok(Response::text(format!("{} {} {}", stock.text()?, price.text()?, tax.text()?)))
//! }
//! ```

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::bindings::switchyard::runtime::rpc as wit;

pub use wit::CallError;

/// A call to build and send; see the module docs.
#[derive(Debug, Clone)]
pub struct Call {
    service: String,
    method: String,
    body: Vec<u8>,
    options: wit::CallOptions,
}

impl Call {
    /// A call to `service` (`"name"` or `"name@<semver range>"`) with `method` in the callee's
    /// route syntax (`"GET /items/42"`).
    pub fn new(service: &str, method: &str) -> Self {
        Self {
            service: service.to_owned(),
            method: method.to_owned(),
            body: Vec::new(),
            options: wit::CallOptions {
                timeout_ms: None,
                headers: Vec::new(),
            },
        }
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets a JSON body (and its content type).
    pub fn json<T: Serialize + ?Sized>(self, value: &T) -> Result<Self, Error> {
        let body = serde_json::to_vec(value)
            .map_err(|err| Error::internal(format!("call body is not serializable: {err}")))?;
        Ok(self.header("content-type", "application/json").body(body))
    }

    /// Sets a postcard body (and its content type).
    pub fn postcard<T: Serialize + ?Sized>(self, value: &T) -> Result<Self, Error> {
        let body = postcard::to_stdvec(value)
            .map_err(|err| Error::internal(format!("call body is not serializable: {err}")))?;
        Ok(self
            .header("content-type", "application/postcard")
            .body(body))
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.options
            .headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// Gives up after `timeout` (never later than this request's own deadline).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout_ms = Some(u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX));
        self
    }

    /// Keeps `reserve` of this request's remaining time for the caller: the call gives up that
    /// much before the caller's own deadline, so the caller can still answer (a fallback, an
    /// error of its own). Without it the node keeps a tenth of what is left (at most 1 s), or
    /// the `reserve_ms` of a `[[bind]]` around the call.
    pub fn reserve(self, reserve: Duration) -> Self {
        let ms = u64::try_from(reserve.as_millis()).unwrap_or(u64::MAX);
        self.header("x-switchyard-reserve-ms", &ms.to_string())
    }

    /// Sends the call and waits for the reply.
    pub fn send(self) -> Result<Reply, CallError> {
        #[cfg(target_arch = "wasm32")]
        return wit::call(&self.service, &self.method, &self.body, &self.options).map(Reply);
        #[cfg(not(target_arch = "wasm32"))]
        return crate::testing::call(
            &self.service,
            &self.method,
            &self.body,
            &self.options.headers,
        )
        .map(Reply);
    }

    /// Sends the call without waiting; calls started together run in parallel.
    pub fn start(self) -> Pending {
        #[cfg(target_arch = "wasm32")]
        return Pending(InFlight::Node(wit::start(
            &self.service,
            &self.method,
            &self.body,
            &self.options,
        )));
        #[cfg(not(target_arch = "wasm32"))]
        return Pending(InFlight::Answered(crate::testing::call(
            &self.service,
            &self.method,
            &self.body,
            &self.options.headers,
        )));
    }
}

/// A call in flight.
#[derive(Debug)]
pub struct Pending(InFlight);

#[derive(Debug)]
enum InFlight {
    /// Running at the node.
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    Node(wit::PendingCall),
    /// Answered already (by a host-side fake).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    Answered(Result<wit::Reply, CallError>),
}

impl Pending {
    /// Waits for the reply.
    pub fn wait(self) -> Result<Reply, CallError> {
        match self.0 {
            InFlight::Node(call) => call.wait().map(Reply),
            InFlight::Answered(answer) => answer.map(Reply),
        }
    }
}

/// Waits until one of `calls` has its reply and returns its index.
pub fn wait_any(calls: &[Pending]) -> usize {
    if let Some(answered) = calls
        .iter()
        .position(|call| matches!(call.0, InFlight::Answered(_)))
    {
        return answered;
    }
    let running: Vec<(usize, &wit::PendingCall)> = calls
        .iter()
        .enumerate()
        .filter_map(|(n, call)| match &call.0 {
            InFlight::Node(pending) => Some((n, pending)),
            InFlight::Answered(_) => None,
        })
        .collect();
    let borrowed: Vec<&wit::PendingCall> = running.iter().map(|(_, call)| *call).collect();
    let first = wit::wait_any(&borrowed) as usize;
    running.get(first).map_or(first, |(n, _)| *n)
}

/// Waits for every call; the results are in the same order.
pub fn wait_all(calls: Vec<Pending>) -> Vec<Result<Reply, CallError>> {
    calls.into_iter().map(Pending::wait).collect()
}

/// What the callee answered (any status it chose).
#[derive(Debug, Clone)]
pub struct Reply(wit::Reply);

impl Reply {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.0.status
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.0
            .headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The raw body.
    pub fn body(&self) -> &[u8] {
        &self.0.body
    }

    /// The raw body, taken out of the reply.
    pub fn into_body(self) -> Vec<u8> {
        self.0.body
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> Result<&str, Error> {
        std::str::from_utf8(&self.0.body)
            .map_err(|err| Error::new(502, format!("reply body is not UTF-8: {err}")))
    }

    /// The body parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.0.body)
            .map_err(|err| Error::new(502, format!("reply body is not the expected JSON: {err}")))
    }

    /// The body decoded as postcard.
    pub fn postcard<T: DeserializeOwned>(&self) -> Result<T, Error> {
        postcard::from_bytes(&self.0.body).map_err(|err| {
            Error::new(
                502,
                format!("reply body is not the expected postcard: {err}"),
            )
        })
    }
}

/// So a handler can `?` a failed call: timeout → 504, unavailable or rejected → 503, callee
/// failure → 502, a malformed call (a bug in this service) → 500.
impl From<CallError> for Error {
    fn from(err: CallError) -> Self {
        let status = match &err {
            CallError::Timeout => 504,
            CallError::Unavailable(_) | CallError::Rejected(_) => 503,
            CallError::Remote(_) => 502,
            CallError::BadRequest(_) => 500,
        };
        let reason = match err {
            CallError::Timeout => "the call timed out".to_owned(),
            CallError::Unavailable(why) => format!("unavailable: {why}"),
            CallError::Rejected(why) => format!("rejected: {why}"),
            CallError::Remote(why) => format!("the callee failed: {why}"),
            CallError::BadRequest(why) => format!("bad call: {why}"),
        };
        Error::new(status, reason)
    }
}
