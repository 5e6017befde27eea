//! The node's budget of instances and memory, shared by every service's slot.
//!
//! The engine's pool has a fixed number of instance slots, sized at start from `[node]
//! max_instances` and `max_memory_mb` (see [`crate::manifest::PoolPlan`]), not from the sum of
//! every service's `max_instances`: a node can host a thousand services whose limits add up
//! to far more than it could run at once. What keeps the pool from running out is admission:
//! a request (or delivery, or stream) takes one instance and its service's `memory_limit_mb`
//! from the budget before it gets an instance, and gives them back when it ends. Past either,
//! it is refused at once (`503` with `Retry-After`), like a service at its own
//! `max_instances`, never left to fail inside wasmtime.
//!
//! Instances kept idle for reuse (`requests_per_instance` > 1) hold a pool slot but no budget;
//! the node keeps at most [`crate::manifest::PoolPlan::max_idle`] of them, and drops a
//! finished instance instead of keeping it when that many are idle.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::manifest::PoolPlan;

/// What every running instance of the node takes from, and gives back to.
pub(crate) struct Budget {
    max_instances: u64,
    max_memory_mib: u64,
    max_idle: u64,
    /// Instances running (high 32 bits) and the MiB of memory limits they hold (low 32 bits):
    /// one word, so taking and giving back a share is one atomic operation on the hot path.
    held: AtomicU64,
    idle: AtomicU64,
}

/// One admitted unit of work's share of the budget, given back on drop.
pub(crate) struct BudgetShare {
    budget: Arc<Budget>,
    share: u64,
}

impl Drop for BudgetShare {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.share, Ordering::AcqRel);
    }
}

/// Why the budget had no room.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BudgetFull {
    #[error(
        "the node runs {0} instances at once, its [node] max_instances (retry soon, or raise it)"
    )]
    Instances(u64),
    #[error(
        "the node's instances hold {held_mib} MiB of memory limits and this one needs {asked_mib} \
         MiB more than its [node] max_memory_mb = {max_mib} allows (retry soon, raise \
         max_memory_mb, or lower memory_limit_mb)"
    )]
    Memory {
        held_mib: u64,
        asked_mib: u64,
        max_mib: u64,
    },
}

const MIB: u64 = 1024 * 1024;
const INSTANCE: u64 = 1 << 32;
const MEMORY_MASK: u64 = INSTANCE - 1;

impl Budget {
    pub(crate) fn new(plan: &PoolPlan) -> Self {
        Self {
            max_instances: u64::from(plan.max_instances).min(MEMORY_MASK),
            max_memory_mib: (plan.max_memory_bytes / MIB).min(MEMORY_MASK),
            max_idle: u64::from(plan.max_idle),
            held: AtomicU64::new(0),
            idle: AtomicU64::new(0),
        }
    }

    /// Takes one instance and `memory` bytes (counted in whole MiB), or says which budget is
    /// full.
    pub(crate) fn take(self: &Arc<Self>, memory: usize) -> Result<BudgetShare, BudgetFull> {
        let memory_mib = (memory as u64).div_ceil(MIB);
        let share = INSTANCE + memory_mib;
        let taken = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                let fits = held >> 32 < self.max_instances
                    && (held & MEMORY_MASK) + memory_mib <= self.max_memory_mib;
                fits.then_some(held + share)
            });
        match taken {
            Ok(_) => Ok(BudgetShare {
                budget: self.clone(),
                share,
            }),
            Err(held) if held >> 32 >= self.max_instances => {
                Err(BudgetFull::Instances(self.max_instances))
            }
            Err(held) => Err(BudgetFull::Memory {
                held_mib: held & MEMORY_MASK,
                asked_mib: memory_mib,
                max_mib: self.max_memory_mib,
            }),
        }
    }

    /// Counts one more idle instance if the node keeps fewer than its cap; `false`: drop it.
    pub(crate) fn keep_idle(&self) -> bool {
        let max_idle = self.max_idle;
        self.idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max_idle).then_some(n + 1)
            })
            .is_ok()
    }

    /// `count` idle instances were taken for work or dropped.
    pub(crate) fn idle_gone(&self, count: usize) {
        if count > 0 {
            self.idle.fetch_sub(count as u64, Ordering::AcqRel);
        }
    }

    /// Instances running now, and the memory limits they hold in bytes.
    #[cfg(test)]
    fn in_use(&self) -> (u64, u64) {
        let held = self.held.load(Ordering::Relaxed);
        (held >> 32, (held & MEMORY_MASK) * MIB)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;

    fn budget(instances: u32, memory_mib: u64, idle: u32) -> Arc<Budget> {
        Arc::new(Budget::new(&PoolPlan {
            max_instances: instances,
            max_memory_bytes: memory_mib * MIB,
            max_idle: idle,
            policy_instances: 0,
            slot_bytes: 64 << 20,
            per_instance: Default::default(),
        }))
    }

    #[test]
    fn instances_and_memory_are_taken_and_given_back() {
        let budget = budget(2, 100, 0);
        let first = budget.take(60 << 20).unwrap();
        // Memory runs out before instances do, and a refusal takes nothing.
        let refused = budget.take(60 << 20).err().unwrap();
        assert!(
            refused.to_string().contains("max_memory_mb = 100"),
            "{refused}"
        );
        assert_eq!(budget.in_use(), (1, 60 * MIB));
        let second = budget.take(40 << 20).unwrap();
        let refused = budget.take(1).err().unwrap();
        assert!(matches!(refused, BudgetFull::Instances(2)), "{refused}");
        drop((first, second));
        assert_eq!(budget.in_use(), (0, 0));
        budget.take(100 << 20).unwrap();
    }

    #[test]
    fn idle_instances_are_capped_node_wide() {
        let budget = budget(4, 100, 2);
        assert!(budget.keep_idle() && budget.keep_idle());
        assert!(!budget.keep_idle());
        budget.idle_gone(1);
        assert!(budget.keep_idle());
    }
}
