//! The node's one wasmtime [`Engine`]: the pooling allocator sized at start, the epoch ticker
//! that enforces deadlines, a linker per world (`service`, `resilience-policy`), and the
//! compile cache. Loading checks a component against its world once, into an `InstancePre`,
//! so instantiating per request does no lookups.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{InstanceAllocationStrategy, PoolingAllocationConfig};

use super::budget::Budget;
use super::cache::ComponentCache;
use super::{EPOCH_TICK, EngineError, LoadError};
use crate::host::policy_bindings::ResiliencePolicyPre;
use crate::host::{
    self, HostState, PolicyState, Proxy, ProxyPre, Service, ServicePre, StreamServicePre,
};
use crate::manifest::PoolPlan;

/// Engine settings a node chooses; everything else is fixed here.
#[derive(Debug, Clone)]
pub(crate) struct EngineConfig {
    /// Where compiled components are cached; `None` compiles on every load.
    pub cache_dir: Option<PathBuf>,
    /// The node's budget of running instances and the pool sized for it.
    pub pool: PoolPlan,
}

/// One wasmtime engine with the pooling allocator, an epoch ticker, a linker per world
/// (`service`, `resilience-policy`) and the compiled-component cache. Cheap to share behind
/// an `Arc`.
pub(crate) struct Engine {
    inner: wasmtime::Engine,
    linker: Linker<HostState>,
    policy_linker: Linker<PolicyState>,
    cache: Option<ComponentCache>,
    ticker_stop: Arc<AtomicBool>,
    /// The pool it was sized with.
    pool: PoolPlan,
    budget: Arc<Budget>,
}

/// A component compiled, checked against the `service` world (or `wasi:http/proxy`) and
/// ready to instantiate.
#[derive(Clone)]
pub struct LoadedComponent {
    pub(crate) exports: Exports,
    /// SHA-256 of the component file, hex.
    pub hash: String,
    /// Whether the compiled code came from the on-disk cache.
    pub from_cache: bool,
}

/// Which world a service's component serves.
#[derive(Clone)]
pub(crate) enum Exports {
    /// Ours (`switchyard:runtime/service`, an SDK guest); `streams` is set when it exports
    /// `stream-handler` (world `stream-service`).
    Service {
        pre: ServicePre<HostState>,
        streams: Option<StreamServicePre<HostState>>,
    },
    /// A standard `wasi:http/proxy` component: it serves HTTP requests only.
    HttpProxy(ProxyPre<HostState>),
}

/// One instance of a service's component.
pub(crate) enum Instance {
    Service(Service),
    HttpProxy(Proxy),
}

impl LoadedComponent {
    /// Instantiates the component in `store`.
    pub(crate) async fn instantiate(
        &self,
        store: &mut wasmtime::Store<HostState>,
    ) -> wasmtime::Result<Instance> {
        Ok(match &self.exports {
            Exports::Service { pre, .. } => Instance::Service(pre.instantiate_async(store).await?),
            Exports::HttpProxy(pre) => Instance::HttpProxy(pre.instantiate_async(store).await?),
        })
    }

    /// The `stream-handler` export, if the component has one.
    pub(crate) fn streams(&self) -> Option<&StreamServicePre<HostState>> {
        match &self.exports {
            Exports::Service { streams, .. } => streams.as_ref(),
            Exports::HttpProxy(_) => None,
        }
    }

    /// Whether it exports `subscriber` (a `wasi:http/proxy` component does not).
    pub(crate) fn takes_messages(&self) -> bool {
        matches!(self.exports, Exports::Service { .. })
    }

    /// The world it serves, as logs and `switchyard check` name it.
    pub fn world(&self) -> &'static str {
        match &self.exports {
            Exports::Service { .. } => "switchyard:runtime/service",
            Exports::HttpProxy(_) => "wasi:http/proxy",
        }
    }
}

impl std::fmt::Debug for LoadedComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedComponent")
            .field("world", &self.world())
            .field("hash", &self.hash)
            .field("from_cache", &self.from_cache)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Builds the engine and starts its epoch ticker thread (stopped when the engine drops).
    pub(crate) fn new(config: &EngineConfig) -> Result<Self, EngineError> {
        let fail = |reason: String| EngineError { reason };
        let mut pool = PoolingAllocationConfig::default();
        let plan = &config.pool;
        let instances = plan.pool_instances().max(1);
        // Every slot is shaped for the largest component the manifest named (see
        // `InstanceShape`); one component cannot take more than a slot's share.
        let shape = plan.per_instance;
        pool.total_component_instances(instances)
            .total_core_instances(instances.saturating_mul(shape.core_instances))
            .total_memories(instances.saturating_mul(shape.memories))
            .total_tables(instances.saturating_mul(shape.tables))
            .total_stacks(instances)
            .max_core_instances_per_component(shape.core_instances)
            .max_memories_per_component(shape.memories)
            .max_tables_per_component(shape.tables)
            .max_memory_size(plan.slot_bytes)
            // Reuse a slot's pages instead of unmapping them: with the kernel's PAGEMAP_SCAN
            // (Linux 6.7+) only the pages a request dirtied are reset, so a resident 8 MiB
            // costs what the guest touched. Measured with `cargo xtask bench`: 2.4x the
            // requests/s of madvise-based resets (TLB shootdowns) on 2 cores.
            .linear_memory_keep_resident(8 * 1024 * 1024)
            .table_keep_resident(1024 * 1024)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut wasm = wasmtime::Config::new();
        wasm.epoch_interruption(true)
            // Each slot reserves what the largest memory limit needs, not 4 GiB: a node hosts
            // thousands of instances' worth of slots. Guest code then checks memory accesses
            // against the bound; `http_hello` measured what that costs (README).
            .memory_reservation(plan.slot_bytes as u64)
            .memory_guard_size(PoolPlan::GUARD_BYTES)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .max_wasm_stack(512 * 1024)
            .async_stack_size(2 * 1024 * 1024);
        let inner = wasmtime::Engine::new(&wasm).map_err(|err| fail(format!("{err:#}")))?;
        let mut linker = Linker::new(&inner);
        host::add_to_linker(&mut linker).map_err(|err| fail(format!("{err:#}")))?;
        let mut policy_linker = Linker::new(&inner);
        host::add_policy_to_linker(&mut policy_linker).map_err(|err| fail(format!("{err:#}")))?;
        let cache = match &config.cache_dir {
            Some(dir) => Some(ComponentCache::open(dir, &inner).map_err(|err| {
                fail(format!(
                    "cannot create the component cache in {}: {err}",
                    dir.display()
                ))
            })?),
            None => None,
        };
        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(inner.clone(), ticker_stop.clone())
            .map_err(|err| fail(format!("cannot start the epoch ticker thread: {err}")))?;
        Ok(Self {
            inner,
            linker,
            policy_linker,
            cache,
            ticker_stop,
            budget: Arc::new(Budget::new(plan)),
            pool: plan.clone(),
        })
    }

    /// The node's budget of running instances, which every slot admits against.
    pub(crate) fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// The largest linear memory the pool has room for.
    pub(crate) fn max_memory_bytes(&self) -> usize {
        self.pool.slot_bytes
    }

    /// The pool it was sized with at start.
    pub(crate) fn pool(&self) -> &PoolPlan {
        &self.pool
    }

    pub(crate) fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner
    }

    /// Reads, compiles (or loads from cache) and type-checks the component at `path`.
    /// Blocking and CPU-heavy: call it from `spawn_blocking`, not from the async executor.
    pub(crate) fn load(&self, path: &Path) -> Result<LoadedComponent, LoadError> {
        self.load_bytes(path, &read(path)?)
    }

    /// Like [`Engine::load`], for bytes already read (a swap's upload); `path` labels errors.
    pub(crate) fn load_bytes(
        &self,
        path: &Path,
        bytes: &[u8],
    ) -> Result<LoadedComponent, LoadError> {
        let started = Instant::now();
        let needs = super::needs(bytes);
        if !self.pool.per_instance.holds(&needs) {
            return Err(LoadError::TooBigForPool {
                path: path.to_path_buf(),
                needs,
                slot: self.pool.per_instance,
            });
        }
        let (component, hash, from_cache) = self.compile(path, bytes)?;
        let wrong_world = |err: wasmtime::Error| LoadError::WrongWorld {
            path: path.to_path_buf(),
            reason: format!("{err:#}"),
        };
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(wrong_world)?;
        // Our world first; a component that is not ours may be a standard wasi:http one.
        let exports = match ServicePre::new(instance_pre.clone()) {
            Ok(pre) => Exports::Service {
                pre,
                streams: StreamServicePre::new(instance_pre).ok(),
            },
            Err(not_ours) => match ProxyPre::new(instance_pre) {
                Ok(proxy) => Exports::HttpProxy(proxy),
                Err(_) => return Err(wrong_world(not_ours)),
            },
        };
        let loaded = LoadedComponent {
            exports,
            hash,
            from_cache,
        };
        tracing::info!(
            component = %path.display(),
            world = loaded.world(),
            hash = &loaded.hash[..12],
            from_cache,
            streams = loaded.streams().is_some(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "component ready"
        );
        Ok(loaded)
    }

    /// Reads, compiles (or loads from cache) and type-checks a `resilience-policy` component.
    pub(crate) fn load_policy(&self, path: &Path) -> Result<LoadedPolicy, LoadError> {
        self.load_policy_bytes(path, &read(path)?)
    }

    /// Like [`Engine::load_policy`], for bytes already read.
    pub(crate) fn load_policy_bytes(
        &self,
        path: &Path,
        bytes: &[u8],
    ) -> Result<LoadedPolicy, LoadError> {
        let (component, hash, _) = self.compile(path, bytes)?;
        let not_a_policy = |err: wasmtime::Error| LoadError::NotAPolicy {
            path: path.to_path_buf(),
            reason: format!("{err:#}"),
        };
        let instance_pre = self
            .policy_linker
            .instantiate_pre(&component)
            .map_err(not_a_policy)?;
        let pre = ResiliencePolicyPre::new(instance_pre).map_err(not_a_policy)?;
        Ok(LoadedPolicy { pre, hash })
    }

    /// Checks that `bytes` are a component, and compiles it or takes it from the cache.
    fn compile(
        &self,
        path: &Path,
        bytes: &[u8],
    ) -> Result<(wasmtime::component::Component, String, bool), LoadError> {
        if !wasmparser::Parser::is_component(bytes) {
            if wasmparser::Parser::is_core_wasm(bytes) {
                return Err(LoadError::CoreModule {
                    path: path.to_path_buf(),
                });
            }
            return Err(LoadError::NotWasm {
                path: path.to_path_buf(),
                head: bytes.iter().take(8).copied().collect(),
            });
        }
        let hash = hex::encode(Sha256::digest(bytes));
        let cached = self
            .cache
            .as_ref()
            .and_then(|cache| cache.get(&self.inner, &hash));
        let from_cache = cached.is_some();
        let component = match cached {
            Some(component) => component,
            None => {
                let component =
                    Component::new(&self.inner, bytes).map_err(|err| LoadError::Invalid {
                        path: path.to_path_buf(),
                        reason: format!("{err:#}"),
                    })?;
                if let Some(cache) = &self.cache {
                    cache.put(&hash, &component);
                }
                component
            }
        };
        Ok((component, hash, from_cache))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|cause| LoadError::Read {
        path: path.to_path_buf(),
        cause,
    })
}

/// A policy component compiled and checked against the `resilience-policy` world.
#[derive(Clone)]
pub(crate) struct LoadedPolicy {
    pub(crate) pre: ResiliencePolicyPre<PolicyState>,
    /// SHA-256 of the component file, hex.
    pub(crate) hash: String,
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

fn spawn_epoch_ticker(engine: wasmtime::Engine, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("switchyard-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })
        .map(drop)
}
