//! Write Switchyard services as WebAssembly components.
//!
//! A service is a plain Rust type that implements [`Service`], exported with [`export!`]. The
//! crate is a `cdylib` built for `wasm32-wasip2`; a Switchyard node loads the resulting
//! component from its manifest and calls [`Service::handle`] once per routed HTTP request, on a
//! fresh instance each time (so globals do not survive between requests: keep state in
//! [`state`], the service's own durable keys).
//!
//! ```no_run
//! use switchyard_sdk::{Error, Request, Response, Service};
//!
//! struct Hello;
//!
//! impl Service for Hello {
//!     fn handle(req: Request) -> Result<Response, Error> {
//!         let greeting = switchyard_sdk::config::get("greeting").unwrap_or("hello".into());
//!         let name = req.param("name").unwrap_or("world");
//!         Ok(Response::text(format!("{greeting}, {name}!\n")))
//!     }
//! }
//!
//! switchyard_sdk::export!(Hello);
//! ```
//!
//! Bodies: [`Request::json`] / [`Response::json`] use serde_json, [`Request::postcard`] /
//! [`Response::postcard`] use postcard (compact, for service-to-service payloads). A handler
//! returns `Result<Response, Error>`, so `?` on a bad body answers `400` with the reason.
//!
//! Logging goes to the node's log, tagged with the service and request id:
//! [`log::info!`](crate::log::info) and friends.

// The generated bindings name this crate by path (`switchyard_sdk::...`), also from inside it.
extern crate self as switchyard_sdk;

#[cfg(feature = "grpc")]
pub mod grpc;
mod message;
pub mod messaging;
pub mod policy;
pub mod quic;
mod request;
mod response;
pub mod rpc;
pub mod state;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use message::{Message, MessageKind};
pub use request::Request;
pub use response::{Error, Response};

/// Bindings generated from `wit/` (the `stream-service` world: `service` plus
/// `stream-handler`). Most authors never need them.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "stream-service",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_service_world",
        default_bindings_module: "switchyard_sdk::bindings",
        runtime_path: "switchyard_sdk::__private::wit_bindgen::rt",
    });
}

/// Bindings for the `resilience-policy` world (used by [`export_policy!`]).
#[doc(hidden)]
pub mod policy_bindings {
    wit_bindgen::generate!({
        world: "resilience-policy",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_policy_world",
        default_bindings_module: "switchyard_sdk::policy_bindings",
        runtime_path: "switchyard_sdk::__private::wit_bindgen::rt",
        with: {
            "switchyard:runtime/log@0.1.9": crate::bindings::switchyard::runtime::log,
            "switchyard:runtime/types@0.1.9": crate::bindings::switchyard::runtime::types,
        },
    });
}

/// What a service implements. Both functions are associated functions (no `self`): the node
/// creates a fresh instance for every request, so there is no long-lived value to hold.
pub trait Service {
    /// Answers one HTTP request routed to this service by the manifest's `routes`.
    /// An `Err` is sent as its status with the message as a plain-text body.
    fn handle(req: Request) -> Result<Response, Error>;

    /// Receives one message of a topic or queue this service subscribes to. Return `Ok` to
    /// acknowledge it, `Err(reason)` to have it redelivered. The default refuses every message,
    /// so a service that subscribes to nothing needs no code here.
    fn on_message(msg: Message) -> Result<(), String> {
        Err(format!(
            "this service does not handle messages (got one on topic `{}`)",
            msg.topic()
        ))
    }

    /// Serves one raw stream another service opened with [`quic::connect`]; returning closes
    /// it. `caller` is the calling service. The default closes it at once (the caller reads
    /// the end) and logs a warning.
    fn stream(stream: quic::Stream, caller: &str) {
        drop(stream);
        log::warn!(
            "`{caller}` opened a stream, but this service does not implement Service::stream"
        );
    }
}

/// Exports a type that implements [`Service`] as the component's `handler`, `subscriber` and
/// `stream-handler`.
///
/// Use it once per crate, at the top level: `switchyard_sdk::export!(MyService);`.
#[macro_export]
macro_rules! export {
    ($service:ty) => {
        const _: () = {
            type SwitchyardServiceAdapter = $crate::__private::Adapter<$service>;
            $crate::__private::export_service_world!(
                SwitchyardServiceAdapter with_types_in $crate::bindings
            );
        };
    };
}

/// The `config` table the operator gave this service in the manifest (`[service.config]`).
pub mod config {
    #[cfg(target_arch = "wasm32")]
    use crate::bindings::switchyard::runtime::config as wit;

    /// The value for `key`, if the manifest sets one ([`crate::testing::set_config`] on
    /// the host).
    pub fn get(key: &str) -> Option<String> {
        #[cfg(target_arch = "wasm32")]
        return wit::get(key);
        #[cfg(not(target_arch = "wasm32"))]
        return crate::testing::config_get(key);
    }

    /// Every key and value, sorted by key.
    pub fn all() -> Vec<(String, String)> {
        #[cfg(target_arch = "wasm32")]
        return wit::get_all();
        #[cfg(not(target_arch = "wasm32"))]
        return crate::testing::config_all();
    }
}

/// Where services run, as this node sees them.
///
/// ```no_run
/// for instance in switchyard_sdk::discovery::resolve("inventory@^1").unwrap_or_default() {
///     switchyard_sdk::log::info!("{} {} local={}", instance.node, instance.version, instance.local);
/// }
/// ```
pub mod discovery {
    use crate::bindings::switchyard::runtime::discovery as wit;

    pub use wit::Instance;

    /// Healthy instances of `service` (`"name"` or `"name@<semver range>"`), this node's
    /// first. `Err` says why the name is malformed.
    pub fn resolve(service: &str) -> Result<Vec<Instance>, String> {
        #[cfg(target_arch = "wasm32")]
        return wit::resolve(service);
        #[cfg(not(target_arch = "wasm32"))]
        return crate::testing::resolve(service);
    }
}

/// Logging into the node's log. Lines carry the service name and request id.
///
/// ```no_run
/// switchyard_sdk::log::info!("served {} items", 3);
/// ```
pub mod log {
    use crate::bindings::switchyard::runtime::log as wit;

    pub use wit::Level;

    /// Writes `message` at `level`.
    pub fn write(level: Level, message: &str) {
        #[cfg(target_arch = "wasm32")]
        wit::log(level, message);
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::log(level, message);
    }

    /// Whether a line at `level` would be written; the macros check it before formatting
    /// (on the host every level is, into [`crate::testing::logs`]).
    pub fn enabled(level: Level) -> bool {
        #[cfg(target_arch = "wasm32")]
        return wit::enabled(level);
        #[cfg(not(target_arch = "wasm32"))]
        return {
            let _ = level;
            true
        };
    }

    #[doc(inline)]
    pub use crate::{
        __log_debug as debug, __log_error as error, __log_info as info, __log_trace as trace,
        __log_warn as warn,
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_at {
    ($level:ident, $($arg:tt)+) => {{
        let level = $crate::log::Level::$level;
        if $crate::log::enabled(level) {
            $crate::log::write(level, &::std::format!($($arg)+));
        }
    }};
}

/// Logs at `trace` level, `format!` style.
#[doc(hidden)]
#[macro_export]
macro_rules! __log_trace { ($($arg:tt)+) => { $crate::__log_at!(Trace, $($arg)+) }; }
/// Logs at `debug` level, `format!` style.
#[doc(hidden)]
#[macro_export]
macro_rules! __log_debug { ($($arg:tt)+) => { $crate::__log_at!(Debug, $($arg)+) }; }
/// Logs at `info` level, `format!` style.
#[doc(hidden)]
#[macro_export]
macro_rules! __log_info { ($($arg:tt)+) => { $crate::__log_at!(Info, $($arg)+) }; }
/// Logs at `warn` level, `format!` style.
#[doc(hidden)]
#[macro_export]
macro_rules! __log_warn { ($($arg:tt)+) => { $crate::__log_at!(Warn, $($arg)+) }; }
/// Logs at `error` level, `format!` style.
#[doc(hidden)]
#[macro_export]
macro_rules! __log_error { ($($arg:tt)+) => { $crate::__log_at!(Error, $($arg)+) }; }

/// Glue used by [`export!`]; not part of the public API.
#[doc(hidden)]
pub mod __private {
    use std::marker::PhantomData;

    use crate::Response;
    pub use crate::bindings::export_service_world;
    use crate::bindings::exports::switchyard::runtime::{handler, stream_handler, subscriber};
    use crate::bindings::switchyard::runtime::types;
    pub use crate::policy::adapter::PolicyAdapter;
    pub use crate::policy_bindings::export_policy_world;
    pub use wit_bindgen;

    /// Implements the generated export traits for any [`crate::Service`].
    pub struct Adapter<S>(PhantomData<S>);

    impl<S: crate::Service> handler::Guest for Adapter<S> {
        fn handle(request: types::Request) -> types::Response {
            S::handle(crate::Request::from_wit(request))
                .unwrap_or_else(Response::from)
                .into_wit()
        }
    }

    impl<S: crate::Service> stream_handler::Guest for Adapter<S> {
        fn handle_stream(io: stream_handler::BidiStream, caller: String) {
            S::stream(crate::quic::Stream::from_wit(io), &caller);
        }
    }

    impl<S: crate::Service> subscriber::Guest for Adapter<S> {
        fn on_message(message: types::Message) -> Result<(), String> {
            S::on_message(crate::Message::from_wit(message))
        }
    }
}
