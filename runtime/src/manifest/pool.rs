//! How big a node's instance pool is, decided from its manifest.
//!
//! Two `[node]` keys make the budget: `max_instances` (service instances running at once,
//! node-wide) and `max_memory_mb` (the memory limits those instances may hold together; each
//! running instance holds its service's `memory_limit_mb`). The pool has a slot for each of
//! them, for the idle instances kept for reuse, for policy instances and for swaps; each slot
//! reserves address space for the largest `memory_limit_mb` (rounded up to a power of two),
//! not wasmtime's default 4 GiB. With slots that small, guest code checks its memory
//! accesses against the bound instead of leaning on 4 GiB of guard pages.
//!
//! `check` refuses what cannot fit: a service whose `memory_limit_mb` is above the whole
//! memory budget or whose `max_instances` is above the node's, and a pool whose address space
//! would pass [`MAX_RESERVED_BYTES`].

use super::Manifest;

/// The most address space the pool may reserve: a quarter of x86-64's 128 TiB user space.
pub(super) const MAX_RESERVED_BYTES: u64 = 32 << 40;
/// Slots for the trial instances of new generations during swaps.
const SWAP_ROOM: u32 = 16;
/// Policy instances beyond what the manifest's bindings need, for bindings an edit adds.
const POLICY_ROOM: u32 = 64;
/// The smallest slot: the default `memory_limit_mb`, so an edit can add default services.
const MIN_SLOT_BYTES: usize = (super::defaults::MEMORY_LIMIT_MB as usize) << 20;

/// The node's budget and the pool sized for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolPlan {
    /// Service instances running at once (`[node] max_instances`).
    pub max_instances: u32,
    /// Memory limits running instances may hold together (`[node] max_memory_mb`).
    pub max_memory_bytes: u64,
    /// Instances kept idle for reuse, node-wide (a quarter of `max_instances`).
    pub max_idle: u32,
    /// Policy instances: each binding's, the one a swap readies and the one kept through the
    /// last swap's probation, plus room for edits.
    pub policy_instances: u32,
    /// The largest linear memory an instance may have: what each slot reserves.
    pub slot_bytes: usize,
    /// What one instance of the largest component takes from the pool.
    pub per_instance: InstanceShape,
}

/// The core instances, linear memories and tables one component instance takes from the
/// pool. A `wasm32-wasip2` Rust guest has a handful of core instances and one or two
/// memories; componentize-py's take 14 core instances, so the node sizes its pool from the
/// components its manifest names ([`PoolPlan::fit`]), and refuses (at load, with the numbers)
/// a later one that needs more than the pool has per instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceShape {
    pub core_instances: u32,
    pub memories: u32,
    pub tables: u32,
}

impl Default for InstanceShape {
    fn default() -> Self {
        Self {
            core_instances: 8,
            memories: PoolPlan::MEMORIES_PER_INSTANCE,
            tables: 4,
        }
    }
}

impl InstanceShape {
    /// Whether an instance needing `needs` fits a slot of this shape.
    pub fn holds(&self, needs: &InstanceShape) -> bool {
        needs.core_instances <= self.core_instances
            && needs.memories <= self.memories
            && needs.tables <= self.tables
    }
}

impl PoolPlan {
    /// Guard bytes after each linear memory (wasmtime's default on 64-bit hosts).
    pub const GUARD_BYTES: u64 = 32 << 20;
    /// Linear memories per pool slot: a component built for `wasm32-wasip2` has one or two.
    pub const MEMORIES_PER_INSTANCE: u32 = 2;

    /// The pool `manifest` asks for.
    pub fn of(manifest: &Manifest) -> Self {
        let largest = manifest
            .services
            .iter()
            .map(|spec| spec.memory_limit_bytes)
            .max()
            .unwrap_or(0);
        let budget = &manifest.node.pool;
        Self {
            max_instances: budget.max_instances,
            max_memory_bytes: budget.max_memory_bytes,
            max_idle: (budget.max_instances / 4).max(1),
            policy_instances: Self::policy_instances_needed(manifest).saturating_add(POLICY_ROOM),
            slot_bytes: largest.max(MIN_SLOT_BYTES).next_power_of_two(),
            per_instance: InstanceShape::default(),
        }
    }

    /// Widens each slot to hold an instance needing `needs` (a component the node serves).
    pub fn fit(&mut self, needs: &InstanceShape) {
        let shape = &mut self.per_instance;
        shape.core_instances = shape.core_instances.max(needs.core_instances);
        shape.memories = shape.memories.max(needs.memories);
        shape.tables = shape.tables.max(needs.tables);
    }

    /// Policy instances `manifest`'s bindings need at most: 3 per policy of each binding.
    pub fn policy_instances_needed(manifest: &Manifest) -> u32 {
        let bindings: usize = manifest.bindings.iter().map(|b| b.policies.len()).sum();
        u32::try_from(bindings)
            .unwrap_or(u32::MAX)
            .saturating_mul(3)
    }

    /// Instance slots in the pool.
    pub fn pool_instances(&self) -> u32 {
        self.max_instances
            .saturating_add(self.max_idle)
            .saturating_add(self.policy_instances)
            .saturating_add(SWAP_ROOM)
    }

    /// The address space the pool's linear memories reserve.
    pub fn reserved_bytes(&self) -> u64 {
        u64::from(self.pool_instances())
            .saturating_mul(u64::from(self.per_instance.memories))
            .saturating_mul((self.slot_bytes as u64).saturating_add(Self::GUARD_BYTES))
    }
}
