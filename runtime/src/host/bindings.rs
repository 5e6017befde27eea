//! Host bindings for the `service` world, generated from `wit/`.
//!
//! Imports that wait (rpc) are async host functions: the guest's fiber yields while the host
//! awaits. The rest are synchronous. Exports are called with `call_async` so a guest runs on a
//! fiber and epoch deadlines can interrupt it. `trappable` imports may trap the guest (a bad
//! resource handle), which is kept apart from errors the guest handles.

#[allow(
    unreachable_pub,
    reason = "bindgen re-exports the `with` type publicly"
)]
pub use super::quic::{GuestConnection, GuestStream};
#[allow(
    unreachable_pub,
    reason = "bindgen re-exports the `with` type publicly"
)]
pub use super::rpc::PendingCall;

wasmtime::component::bindgen!({
    world: "service",
    path: "../wit",
    imports: {
        "switchyard:runtime/rpc.call": async,
        "switchyard:runtime/rpc.start": trappable,
        "switchyard:runtime/rpc.wait-any": async | trappable,
        "switchyard:runtime/rpc.[method]pending-call.wait": async | trappable,
        "switchyard:runtime/quic.connect": async,
        "switchyard:runtime/quic.[method]connection.open-stream": async | trappable,
        "switchyard:runtime/quic.[method]bidi-stream.read": async | trappable,
        "switchyard:runtime/quic.[method]bidi-stream.write": async | trappable,
        "switchyard:runtime/quic.[method]bidi-stream.finish": async | trappable,
        "switchyard:runtime/quic.[method]connection.node": trappable,
        "switchyard:runtime/messaging.send": async,
        "switchyard:runtime/messaging.request": async,
        "switchyard:runtime/messaging.reply": async,
        "switchyard:runtime/messaging.publish": async,
        "switchyard:runtime/messaging.read": async,
        "switchyard:runtime/messaging.request-all": async,
        "switchyard:runtime/state.get": async,
        "switchyard:runtime/state.put": async,
        "switchyard:runtime/state.delete": async,
        "switchyard:runtime/state.scan": async,
        "switchyard:runtime/state.commit": async,
        "switchyard:runtime/grpc.send": async,
    },
    exports: { default: async },
    with: {
        "switchyard:runtime/rpc.pending-call": PendingCall,
        "switchyard:runtime/quic.connection": GuestConnection,
        "switchyard:runtime/quic.bidi-stream": GuestStream,
    },
});

/// The `stream-service` world: `service` plus the optional `stream-handler` export. Its
/// imports are the ones above, so only the export is looked up from it.
pub(crate) mod streams {
    wasmtime::component::bindgen!({
        world: "stream-service",
        path: "../wit",
        exports: { default: async },
        with: {
            "switchyard:runtime/types": super::switchyard::runtime::types,
            "switchyard:runtime/log": super::switchyard::runtime::log,
            "switchyard:runtime/config": super::switchyard::runtime::config,
            "switchyard:runtime/rpc": super::switchyard::runtime::rpc,
            "switchyard:runtime/discovery": super::switchyard::runtime::discovery,
            "switchyard:runtime/quic": super::switchyard::runtime::quic,
            "switchyard:runtime/messaging": super::switchyard::runtime::messaging,
            "switchyard:runtime/state": super::switchyard::runtime::state,
            "switchyard:runtime/grpc": super::switchyard::runtime::grpc,
        },
    });
}

/// The `resilience-policy` world: a policy component's one export.
pub(crate) mod policy {
    wasmtime::component::bindgen!({
        world: "resilience-policy",
        path: "../wit",
        exports: { default: async },
        with: {
            "switchyard:runtime/types": super::switchyard::runtime::types,
            "switchyard:runtime/log": super::switchyard::runtime::log,
        },
    });
}

/// The message record a guest's `subscriber.on-message` receives.
pub(crate) use self::switchyard::runtime::types::Message as GuestMessage;
/// The request record a guest's `handler.handle` receives.
pub(crate) use self::switchyard::runtime::types::Request as GuestRequest;
/// The response record a guest's `handler.handle` returns.
pub(crate) use self::switchyard::runtime::types::Response as GuestResponse;

/// The interfaces a guest imports, for the host's implementations.
pub(crate) mod imports {
    pub(crate) use super::switchyard::runtime::{
        config, discovery, log, messaging, quic, rpc, state, types,
    };
}
