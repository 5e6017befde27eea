//! `METHOD /path` → whatever serves it (`T`: for the node, a service's slot), built once from
//! the manifest. The ingress routes HTTP requests with one router over every service; `rpc`
//! routes a call's method with a router per callee. Generic, so routing knows nothing of wasm.

use std::collections::HashMap;
use std::sync::Arc;

/// What a route leads to.
#[derive(Clone)]
pub(crate) struct Target<T> {
    pub(crate) value: T,
    /// The pattern as written, e.g. `/hello/{name}` (for logs and spans).
    pub(crate) pattern: Arc<str>,
    /// The method it was added for (upper-case, or `*`).
    pub(crate) method: Arc<str>,
}

/// The result of looking a request up.
pub(crate) enum Lookup<T> {
    Found {
        target: Target<T>,
        params: Vec<(String, String)>,
    },
    /// The path exists, but not for this method; these are the methods it has.
    WrongMethod(Vec<String>),
    NotFound,
}

pub(crate) struct Router<T> {
    /// Method (upper-case, or `*` for any) → path router.
    by_method: HashMap<String, matchit::Router<Target<T>>>,
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Self {
            by_method: HashMap::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("route `{method} {pattern}` of service `{service}` cannot be added: {reason}")]
pub(crate) struct RouteError {
    pub(crate) method: String,
    pub(crate) pattern: String,
    pub(crate) service: String,
    pub(crate) reason: String,
}

impl<T: Clone> Router<T> {
    /// Routes `method pattern` of `service` to `value`.
    pub(crate) fn add(
        &mut self,
        method: &str,
        pattern: &str,
        service: &str,
        value: T,
    ) -> Result<(), RouteError> {
        let target = Target {
            value,
            pattern: pattern.into(),
            method: method.into(),
        };
        self.by_method
            .entry(method.to_owned())
            .or_default()
            .insert(pattern, target)
            .map_err(|err| RouteError {
                method: method.to_owned(),
                pattern: pattern.to_owned(),
                service: service.to_owned(),
                reason: err.to_string(),
            })
    }

    /// What serves `method path`, with the values the pattern captured, percent-decoded
    /// (`/hello/J%C3%BCrgen` gives `name` = `Jürgen`; a `{*rest}` is decoded too, so an
    /// encoded `%2F` in it becomes `/`). `path` is as the client sent it.
    pub(crate) fn lookup(&self, method: &str, path: &str) -> Lookup<T> {
        for key in [method, "*"] {
            if let Some(found) = self
                .by_method
                .get(key)
                .and_then(|router| router.at(path).ok())
            {
                return Lookup::Found {
                    target: found.value.clone(),
                    params: found
                        .params
                        .iter()
                        .map(|(name, value)| (name.to_owned(), decoded(value)))
                        .collect(),
                };
            }
        }
        let mut allowed: Vec<String> = self
            .by_method
            .iter()
            .filter(|(_, router)| router.at(path).is_ok())
            .map(|(method, _)| method.clone())
            .collect();
        if allowed.is_empty() {
            return Lookup::NotFound;
        }
        allowed.sort();
        Lookup::WrongMethod(allowed)
    }
}

/// `value` percent-decoded; bytes that are not UTF-8 once decoded become U+FFFD (a WIT
/// string is UTF-8), the rest of the value kept.
fn decoded(value: &str) -> String {
    percent_encoding::percent_decode_str(value)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::{Lookup, Router};

    fn params(router: &Router<u8>, path: &str) -> Vec<(String, String)> {
        match router.lookup("GET", path) {
            Lookup::Found { params, .. } => params,
            _ => panic!("{path} not found"),
        }
    }

    #[test]
    fn captured_values_are_percent_decoded() {
        let mut router = Router::default();
        assert!(router.add("GET", "/hello/{name}", "hello", 1).is_ok());
        assert!(router.add("GET", "/files/{*rest}", "files", 2).is_ok());
        assert_eq!(
            params(&router, "/hello/J%C3%BCrgen%20X"),
            [("name".to_owned(), "Jürgen X".to_owned())]
        );
        assert_eq!(
            params(&router, "/files/a%2Fb/c%25"),
            [("rest".to_owned(), "a/b/c%".to_owned())]
        );
        // Not UTF-8 once decoded: replaced, never refused or dropped.
        assert_eq!(
            params(&router, "/hello/%FFok"),
            [("name".to_owned(), "\u{FFFD}ok".to_owned())]
        );
        // Not a valid escape: kept as written.
        assert_eq!(
            params(&router, "/hello/100%"),
            [("name".to_owned(), "100%".to_owned())]
        );
    }
}
