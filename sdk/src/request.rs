use serde::de::DeserializeOwned;

use crate::Error;
use crate::bindings::switchyard::runtime::types;

/// An HTTP request routed to this service.
///
/// ```no_run
/// # use switchyard_sdk::{Request, Response, Error};
/// #[derive(serde::Deserialize)]
/// struct Order { sku: String, qty: u32 }
///
/// fn create(req: Request) -> Result<Response, Error> {
///     let order: Order = req.json()?; // a bad body answers 400 with serde's reason
///     Ok(Response::text(format!("{} x {}", order.qty, order.sku)).with_status(201))
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Request {
    inner: types::Request,
}

impl Request {
    pub(crate) fn from_wit(inner: types::Request) -> Self {
        Self { inner }
    }

    /// The upper-case method, e.g. `"GET"`.
    pub fn method(&self) -> &str {
        &self.inner.method
    }

    /// The path without the query string.
    pub fn path(&self) -> &str {
        &self.inner.path
    }

    /// The raw query string (without `?`), if there is one.
    pub fn query(&self) -> Option<&str> {
        self.inner.query.as_deref()
    }

    /// The first value of query parameter `name` (not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query()?
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    }

    /// The value captured by `{name}` in the route pattern.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.inner
            .params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.inner
            .headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Every header, lower-case names, in arrival order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.inner.headers
    }

    /// The raw body.
    pub fn body(&self) -> &[u8] {
        &self.inner.body
    }

    /// The body as UTF-8 text; `400` if it is not.
    pub fn text(&self) -> Result<&str, Error> {
        std::str::from_utf8(&self.inner.body)
            .map_err(|err| Error::bad_request(format!("body is not UTF-8: {err}")))
    }

    /// The body parsed as JSON; `400` with serde's reason if it does not parse.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.inner.body)
            .map_err(|err| Error::bad_request(format!("body is not the expected JSON: {err}")))
    }

    /// The body decoded as postcard; `400` if it does not decode.
    pub fn postcard<T: DeserializeOwned>(&self) -> Result<T, Error> {
        postcard::from_bytes(&self.inner.body)
            .map_err(|err| Error::bad_request(format!("body is not the expected postcard: {err}")))
    }

    /// The id the node gave this request (also in the `x-request-id` response header).
    pub fn request_id(&self) -> &str {
        &self.inner.request_id
    }

    /// Time left before the node gives up on this request and answers 504.
    pub fn deadline(&self) -> std::time::Duration {
        std::time::Duration::from_millis(u64::from(self.inner.deadline_ms))
    }

    /// A request built by hand, for unit tests of handlers run on the host.
    pub fn builder(method: &str, path: &str) -> RequestBuilder {
        RequestBuilder {
            inner: types::Request {
                method: method.to_ascii_uppercase(),
                path: path.to_owned(),
                query: None,
                headers: Vec::new(),
                params: Vec::new(),
                body: Vec::new(),
                request_id: "test".to_owned(),
                deadline_ms: 30_000,
            },
        }
    }
}

/// Builds a [`Request`] for tests; see [`Request::builder`].
#[derive(Debug)]
pub struct RequestBuilder {
    inner: types::Request,
}

impl RequestBuilder {
    /// Sets a path parameter as the router would.
    pub fn param(mut self, name: &str, value: &str) -> Self {
        self.inner.params.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.inner
            .headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// Sets the query string (without `?`).
    pub fn query(mut self, query: &str) -> Self {
        self.inner.query = Some(query.to_owned());
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.inner.body = body.into();
        self
    }

    /// The finished request.
    pub fn build(self) -> Request {
        Request { inner: self.inner }
    }
}
