//! Running guest components: one wasmtime [`Engine`] per node, a compiled-component cache on
//! disk, and a [`Slot`] per service that hands each request a fresh pooled instance.
//!
//! Why a fresh instance per request: requests cannot see each other's memory, a trap or a
//! timeout only ever poisons one store, and with the pooling allocator creating and dropping
//! an instance costs about 7-8 us of CPU (`rpc_remote`'s same-node rows, fresh vs reused);
//! services that keep no per-request state can reuse instances (`requests_per_instance`).
//! Limits are enforced per store: an epoch deadline (the engine's ticker advances the epoch
//! every [`EPOCH_TICK`]; at each tick a running guest either yields its thread to other tasks
//! or, past its deadline, is stopped) plus a host-side timeout for time spent awaiting the
//! host, a linear-memory cap through a [`wasmtime::ResourceLimiter`], and a count of work in
//! flight that refuses at once at `max_instances` instead of queueing.

mod budget;
mod cache;
mod engine;
mod probation;
mod slot;
mod table;

pub(crate) use probation::{Probation, SwapState, Verdict};

pub(crate) use crate::host::{GuestRequest, GuestResponse};
use engine::Instance;
pub(crate) use engine::LoadedPolicy;
pub(crate) use engine::{Engine, EngineConfig, LoadedComponent};
pub(crate) use slot::{Slot, SlotConfig, SlotError, SlotStats, SwapError, SwapEvent};
pub(crate) use table::{Callee, Directory, ServiceTable};

use std::path::PathBuf;
use std::time::Duration;

/// How often the epoch advances; deadlines are rounded up to it.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The epoch deadline (in ticks from now) that lets a guest run for `limit`, rounded up.
pub(crate) fn epoch_ticks(limit: Duration) -> u64 {
    limit.as_millis().div_ceil(EPOCH_TICK.as_millis()) as u64 + 1
}

/// Why a component could not be loaded. Each variant says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file is gone or unreadable.
    #[error("cannot read component {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// Not WebAssembly at all.
    #[error(
        "{} is not a WebAssembly file (it starts with {head:02x?}); point `component` at the \
         .wasm that `cargo xtask build-guests` produced", path.display()
    )]
    NotWasm { path: PathBuf, head: Vec<u8> },
    /// A core module, not a component.
    #[error(
        "{} is a core WebAssembly module, not a component; build the guest for \
         `wasm32-wasip2` (cargo xtask build-guests), or wrap it with `wasm-tools component new`",
        path.display()
    )]
    CoreModule { path: PathBuf },
    /// The bytes say component but do not validate or compile.
    #[error("{} is not a valid component: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    /// A valid component, but not one of the `service` world.
    #[error(
        "{} does not fit the `switchyard:runtime/service` world: {reason}\n  hint: build it with \
         switchyard-sdk and `switchyard_sdk::export!(YourType)`, or as a standard \
         `wasi:http/proxy` component (exporting `wasi:http/incoming-handler@0.2.x`); a guest \
         may import only switchyard:runtime and wasi interfaces", path.display()
    )]
    WrongWorld { path: PathBuf, reason: String },
    /// A valid component, but not a policy.
    #[error(
        "{} is not a `switchyard:runtime/resilience-policy` component: {reason}\n  hint: build \
         it with switchyard-sdk and `switchyard_sdk::export_policy!(YourType)`", path.display()
    )]
    NotAPolicy { path: PathBuf, reason: String },
    /// A `wasi:http/proxy` component where messages are to be delivered.
    #[error(
        "{} is a wasi:http/proxy component, which takes no messages, but {consumer} names its \
         service as subscriber\n  hint: build the subscriber with switchyard-sdk (it exports \
         `subscriber`), or subscribe another service", path.display()
    )]
    TakesNoMessages { path: PathBuf, consumer: String },
    /// More core instances, memories or tables per instance than the pool's slots hold.
    #[error(
        "{} needs {} core instances, {} memories and {} tables per instance; this node's pool \
         was sized at start for {} core instances, {} memories and {} tables (the most its \
         manifest's components needed)\n  hint: name this component in the manifest and \
         restart the node, so the pool is sized for it", path.display(), needs.core_instances,
         needs.memories, needs.tables, slot.core_instances, slot.memories, slot.tables
    )]
    TooBigForPool {
        path: PathBuf,
        needs: crate::manifest::InstanceShape,
        slot: crate::manifest::InstanceShape,
    },
}

/// What one instance of the component in `bytes` takes from the pool: the core instances it
/// creates (each `instantiate` of a core module) and the memories and tables those define.
/// Modules are counted in the order they are defined, as the index space of a flat component
/// (what wasm-component-ld and componentize-py write) numbers them; an index beyond that (a
/// nested component's) counts as the largest module. Bytes that do not parse need nothing
/// here; compiling them says what is wrong.
pub(crate) fn needs(bytes: &[u8]) -> crate::manifest::InstanceShape {
    use wasmparser::{Instance, Payload};
    // (memories, tables) each core module defines, in the order they appear.
    let mut modules: Vec<(u32, u32)> = Vec::new();
    let mut instantiated: Vec<u32> = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else { break };
        match payload {
            Payload::ModuleSection { .. } => modules.push((0, 0)),
            Payload::MemorySection(reader) => {
                if let Some(module) = modules.last_mut() {
                    module.0 += reader.count();
                }
            }
            Payload::TableSection(reader) => {
                if let Some(module) = modules.last_mut() {
                    module.1 += reader.count();
                }
            }
            Payload::InstanceSection(reader) => {
                for instance in reader.into_iter().flatten() {
                    if let Instance::Instantiate { module_index, .. } = instance {
                        instantiated.push(module_index);
                    }
                }
            }
            _ => {}
        }
    }
    let largest = modules
        .iter()
        .fold((0, 0), |(m, t), (mm, tt)| (m.max(*mm), t.max(*tt)));
    let mut needs = crate::manifest::InstanceShape {
        core_instances: u32::try_from(instantiated.len()).unwrap_or(u32::MAX),
        memories: 0,
        tables: 0,
    };
    for index in instantiated {
        let (memories, tables) = modules.get(index as usize).copied().unwrap_or(largest);
        needs.memories = needs.memories.saturating_add(memories);
        needs.tables = needs.tables.saturating_add(tables);
    }
    needs
}

/// Why the engine could not be built (a configuration the host cannot satisfy).
#[derive(Debug, thiserror::Error)]
#[error("cannot start the wasm engine: {reason}")]
pub struct EngineError {
    reason: String,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    #[test]
    fn a_component_needs_what_its_core_instances_define() {
        let component = wat::parse_str(
            r#"(component
                (core module $big (memory 1) (memory 1) (table 1 funcref))
                (core module $small)
                (core instance (instantiate $big))
                (core instance (instantiate $big))
                (core instance (instantiate $small))
            )"#,
        )
        .unwrap();
        let needs = super::needs(&component);
        assert_eq!(
            (needs.core_instances, needs.memories, needs.tables),
            (3, 4, 2)
        );
        assert_eq!(super::needs(b"not wasm").core_instances, 0);
    }
}
