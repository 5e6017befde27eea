//! Host bindings for the `service` world, generated from `wit/`.
//!
//! Imports are synchronous (they never wait on I/O yet); exports are called with
//! `call_async` so a guest runs on a fiber and epoch deadlines can interrupt it.

wasmtime::component::bindgen!({
    world: "service",
    path: "../wit",
    exports: { default: async },
});

/// The request record a guest's `handler.handle` receives.
pub use self::switchyard::runtime::types::Request as GuestRequest;
/// The response record a guest's `handler.handle` returns.
pub use self::switchyard::runtime::types::Response as GuestResponse;

/// The interfaces a guest imports, for the host's implementations.
pub(crate) mod imports {
    pub(crate) use super::switchyard::runtime::{config, log, types};
}
