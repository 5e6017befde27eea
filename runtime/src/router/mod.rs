//! `METHOD /path` → service, built once from the manifest. The ingress routes HTTP requests
//! with one router over every service; `rpc` routes a call's method with a router per callee.

use std::collections::HashMap;
use std::sync::Arc;

use crate::wasm::Slot;

/// What a route leads to.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) slot: Arc<Slot>,
    /// The pattern as written, e.g. `/hello/{name}` (for logs and spans).
    pub(crate) pattern: Arc<str>,
}

/// The result of looking a request up.
pub(crate) enum Lookup {
    Found {
        target: Target,
        params: Vec<(String, String)>,
    },
    /// The path exists, but not for this method; these are the methods it has.
    WrongMethod(Vec<String>),
    NotFound,
}

#[derive(Default)]
pub(crate) struct Router {
    /// Method (upper-case, or `*` for any) → path router.
    by_method: HashMap<String, matchit::Router<Target>>,
}

#[derive(Debug, thiserror::Error)]
#[error("route `{method} {pattern}` of service `{service}` cannot be added: {reason}")]
pub(crate) struct RouteError {
    pub(crate) method: String,
    pub(crate) pattern: String,
    pub(crate) service: String,
    pub(crate) reason: String,
}

impl Router {
    pub(crate) fn add(
        &mut self,
        method: &str,
        pattern: &str,
        slot: Arc<Slot>,
    ) -> Result<(), RouteError> {
        let service = slot.name().to_owned();
        let target = Target {
            slot,
            pattern: pattern.into(),
        };
        self.by_method
            .entry(method.to_owned())
            .or_default()
            .insert(pattern, target)
            .map_err(|err| RouteError {
                method: method.to_owned(),
                pattern: pattern.to_owned(),
                service,
                reason: err.to_string(),
            })
    }

    pub(crate) fn lookup(&self, method: &str, path: &str) -> Lookup {
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
