use serde::Serialize;

use crate::bindings::switchyard::runtime::types;

/// An HTTP response.
///
/// ```
/// use switchyard_sdk::Response;
/// let res = Response::text("created\n").with_status(201).with_header("x-kind", "demo");
/// assert_eq!(res.status(), 201);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    /// An empty response with `status`.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// `200` with a `text/plain; charset=utf-8` body.
    pub fn text(body: impl Into<String>) -> Self {
        Self::new(200)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(body.into().into_bytes())
    }

    /// `200` with `value` as a JSON body. Serializing plain data cannot fail; a value whose
    /// `Serialize` impl fails gives `500` with the reason.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self::new(200)
                .with_header("content-type", "application/json")
                .with_body(body),
            Err(err) => Error::internal(format!("response is not serializable: {err}")).into(),
        }
    }

    /// `200` with `value` encoded as postcard.
    pub fn postcard<T: Serialize + ?Sized>(value: &T) -> Self {
        match postcard::to_stdvec(value) {
            Ok(body) => Self::new(200)
                .with_header("content-type", "application/postcard")
                .with_body(body),
            Err(err) => Error::internal(format!("response is not serializable: {err}")).into(),
        }
    }

    /// Replaces the status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Adds a header (names are sent lower-case).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// Replaces the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    pub(crate) fn into_wit(self) -> types::Response {
        types::Response {
            status: self.status,
            headers: self.headers,
            body: self.body,
        }
    }
}

/// An error a handler answers with: a status and a plain-text reason.
///
/// `?` converts it (and a failed [`crate::Request::json`] or `postcard`) into the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    status: u16,
    message: String,
}

impl Error {
    /// An error with any status.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// `400 Bad Request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    /// `404 Not Found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, message)
    }

    /// `500 Internal Server Error`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, message)
    }

    /// The status it answers with.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The reason.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for Error {}

impl From<Error> for Response {
    fn from(err: Error) -> Self {
        Response::text(format!("{}\n", err.message)).with_status(err.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Request;

    #[derive(serde::Deserialize, serde::Serialize, PartialEq, Debug)]
    struct Order {
        sku: String,
        qty: u32,
    }

    #[test]
    fn bad_json_body_answers_400_with_the_reason() {
        let req = Request::builder("post", "/orders")
            .body("{\"sku\": 1}")
            .build();
        let res = req
            .json::<Order>()
            .map(|_| Response::new(200))
            .unwrap_or_else(Response::from);
        assert_eq!(res.status(), 400);
        let body = String::from_utf8_lossy(res.body()).into_owned();
        assert!(body.contains("invalid type"), "{body}");
    }

    #[test]
    fn postcard_round_trips_through_a_request() {
        let order = Order {
            sku: "ab-1".into(),
            qty: 3,
        };
        let res = Response::postcard(&order);
        let req = Request::builder("POST", "/orders")
            .body(res.body().to_vec())
            .build();
        assert_eq!(req.postcard::<Order>(), Ok(order));
        assert_eq!(res.header("Content-Type"), Some("application/postcard"));
    }

    #[test]
    fn params_query_and_headers_are_found_by_name() {
        let req = Request::builder("GET", "/hello/ada")
            .param("name", "ada")
            .query("lang=en&loud")
            .header("X-Trace", "1")
            .build();
        assert_eq!(req.param("name"), Some("ada"));
        assert_eq!(req.param("nope"), None);
        assert_eq!(req.query_param("lang"), Some("en"));
        assert_eq!(req.query_param("loud"), Some(""));
        assert_eq!(req.header("x-trace"), Some("1"));
    }
}
