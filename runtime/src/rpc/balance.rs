//! Which instance takes a call, per the callee's `[balance.<service>]` strategy.
//!
//! - Round robin: in turn.
//! - Power of two choices: two at random, the one with fewer calls in flight.
//! - Peak EWMA (as Finagle and linkerd do it): two at random, the one with the lower
//!   `latency × (calls in flight + 1)`, where latency is a moving average that jumps up to
//!   any slower observation at once and decays back over [`DECAY`]; so a peer that turns slow
//!   is avoided after its first slow answer, not after the average catches up.
//!
//! State is per instance (`None` is this node) and shared by every call on the node.
//!
//! A peer that could not be reached at all (no connection, no stream: the call never left
//! this node) is left out of every pick for [`EJECTION`], so a dead node costs one connection
//! attempt per second rather than one per call, and a restarted one is back soon after.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::manifest::Strategy;

/// How fast the latency average forgets (the time constant of its exponential decay).
const DECAY: Duration = Duration::from_secs(10);
/// What an instance with no answers yet is assumed to take, so it gets tried but is not
/// flooded before its first answer.
const DEFAULT_LATENCY: Duration = Duration::from_millis(1);
/// How long an unreachable peer is left out.
pub(super) const EJECTION: Duration = Duration::from_secs(1);

type InstanceKey = Option<SocketAddr>;

#[derive(Default)]
pub(super) struct Balancer {
    next: AtomicUsize,
    loads: Mutex<HashMap<InstanceKey, Load>>,
    /// Unreachable peers: until when they are left out, and why. Mostly empty, so the count
    /// spares every call the lock.
    ejected: Mutex<HashMap<SocketAddr, (Instant, String)>>,
    ejected_count: AtomicUsize,
}

struct Load {
    in_flight: usize,
    /// Peak-sensitive moving average of call latency, in nanoseconds.
    latency_ns: f64,
    updated: Instant,
}

impl Load {
    fn new() -> Self {
        Self {
            in_flight: 0,
            latency_ns: DEFAULT_LATENCY.as_nanos() as f64,
            updated: Instant::now(),
        }
    }

    fn observe(&mut self, latency: Duration, now: Instant) {
        let sample = latency.as_nanos() as f64;
        if sample > self.latency_ns {
            self.latency_ns = sample;
        } else {
            let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
            let keep = (-elapsed / DECAY.as_secs_f64()).exp();
            self.latency_ns = self.latency_ns * keep + sample * (1.0 - keep);
        }
        self.updated = now;
    }

    fn cost(&self) -> f64 {
        self.latency_ns * (self.in_flight as f64 + 1.0)
    }
}

impl Balancer {
    /// One of `candidates` (not empty) by `strategy`.
    pub(super) fn pick(&self, candidates: &[InstanceKey], strategy: Strategy) -> InstanceKey {
        let n = candidates.len();
        if n == 1 {
            return candidates[0];
        }
        if strategy == Strategy::RoundRobin {
            return candidates[self.next.fetch_add(1, Ordering::Relaxed) % n];
        }
        let first = fastrand::usize(..n);
        let second = (first + 1 + fastrand::usize(..n - 1)) % n;
        let (a, b) = (candidates[first], candidates[second]);
        let Ok(loads) = self.loads.lock() else {
            return a;
        };
        let better_b = match strategy {
            Strategy::PowerOfTwoChoices => {
                let in_flight = |key| loads.get(&key).map_or(0, |load: &Load| load.in_flight);
                in_flight(b) < in_flight(a)
            }
            _ => {
                let cost = |key| loads.get(&key).map_or(Load::new().cost(), Load::cost);
                cost(b) < cost(a)
            }
        };
        if better_b { b } else { a }
    }

    /// Leaves `peer` out of picks for [`EJECTION`]; `reason` is what failed.
    pub(super) fn eject(&self, peer: SocketAddr, reason: String) {
        if let Ok(mut ejected) = self.ejected.lock() {
            ejected.insert(peer, (Instant::now() + EJECTION, reason));
            self.ejected_count.store(ejected.len(), Ordering::Relaxed);
        }
    }

    /// Removes ejected peers from `peers`; returns why one of them was ejected, if any was.
    pub(super) fn retain_reachable(&self, peers: &mut Vec<SocketAddr>) -> Option<String> {
        if self.ejected_count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut ejected = self.ejected.lock().ok()?;
        let now = Instant::now();
        ejected.retain(|_, (until, _)| *until > now);
        self.ejected_count.store(ejected.len(), Ordering::Relaxed);
        let mut reason = None;
        peers.retain(|peer| match ejected.get(peer) {
            Some((_, why)) => {
                reason = Some(format!("{peer}: {why}"));
                false
            }
            None => true,
        });
        reason
    }

    /// Calls in flight to `instance` now.
    pub(super) fn in_flight(&self, instance: InstanceKey) -> u32 {
        self.loads
            .lock()
            .ok()
            .and_then(|loads| loads.get(&instance).map(|load| load.in_flight as u32))
            .unwrap_or(0)
    }

    /// Counts a call to `instance` as in flight until the guard drops, then records how long
    /// it took.
    pub(super) fn track(&self, instance: InstanceKey) -> InFlight<'_> {
        if let Ok(mut loads) = self.loads.lock() {
            loads.entry(instance).or_insert_with(Load::new).in_flight += 1;
        }
        InFlight {
            balancer: self,
            instance,
            started: Instant::now(),
        }
    }
}

pub(super) struct InFlight<'a> {
    balancer: &'a Balancer,
    instance: InstanceKey,
    started: Instant,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let now = Instant::now();
        if let Ok(mut loads) = self.balancer.loads.lock()
            && let Some(load) = loads.get_mut(&self.instance)
        {
            load.in_flight = load.in_flight.saturating_sub(1);
            load.observe(now - self.started, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_ewma_jumps_to_a_slow_answer_and_decays_back() {
        let start = Instant::now();
        let mut load = Load::new();
        load.observe(Duration::from_millis(2), start);
        load.observe(Duration::from_millis(50), start);
        assert_eq!(load.latency_ns, 50e6, "the peak is taken at once");
        // One time constant later a fast answer pulls it most of the way back.
        load.observe(Duration::from_millis(2), start + DECAY);
        let expected = 50e6 * (-1f64).exp() + 2e6 * (1.0 - (-1f64).exp());
        assert!(
            (load.latency_ns - expected).abs() < 1.0,
            "{}",
            load.latency_ns
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_peer_is_left_out_until_its_time_is_up() {
        let balancer = Balancer::default();
        let (a, b) = (
            SocketAddr::from(([127, 0, 0, 1], 1)),
            SocketAddr::from(([127, 0, 0, 1], 2)),
        );
        let mut peers = vec![a, b];
        assert_eq!(balancer.retain_reachable(&mut peers), None);
        assert_eq!(peers, [a, b]);
        balancer.eject(a, "no answer".into());
        let mut peers = vec![a, b];
        let reason = balancer.retain_reachable(&mut peers);
        assert_eq!(peers, [b]);
        assert_eq!(reason.as_deref(), Some("127.0.0.1:1: no answer"));
        tokio::time::advance(EJECTION - Duration::from_millis(1)).await;
        let mut peers = vec![a, b];
        assert!(balancer.retain_reachable(&mut peers).is_some());
        assert_eq!(peers, [b], "back in early");
        // Its time is up: back in, and the table forgets it.
        tokio::time::advance(Duration::from_millis(1)).await;
        let mut peers = vec![a, b];
        assert_eq!(balancer.retain_reachable(&mut peers), None);
        assert_eq!(peers, [a, b]);
        assert_eq!(balancer.ejected_count.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn peak_ewma_prefers_the_fast_instance() {
        let balancer = Balancer::default();
        let (fast, slow) = (
            Some(SocketAddr::from(([127, 0, 0, 1], 1))),
            Some(SocketAddr::from(([127, 0, 0, 1], 2))),
        );
        if let Ok(mut loads) = balancer.loads.lock() {
            let now = Instant::now();
            for (key, ms) in [(fast, 1), (slow, 40)] {
                let mut load = Load::new();
                load.observe(Duration::from_millis(ms), now);
                loads.insert(key, load);
            }
        }
        let picks: Vec<_> = (0..100)
            .map(|_| balancer.pick(&[fast, slow], Strategy::PeakEwma))
            .collect();
        assert!(picks.iter().all(|pick| *pick == fast));
    }
}
