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
                        .map(|(name, value)| (name.to_owned(), value.to_owned()))
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
