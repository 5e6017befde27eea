//! A slot's swaps: a new generation is tried, installed, watched through probation, and
//! rolled back if it fails.

use super::*;
use crate::wasm::probation::{Probation, Verdict};

impl Slot {
    /// Makes new code, new settings (limits, config, env) or both what new requests run on.
    /// The new generation is instantiated once first (one that cannot instantiate never
    /// serves); in-flight requests finish on the old generation, which is dropped when the
    /// last of them ends and its probation is over. During [`PROBATION`] the new generation is
    /// watched and rolled back if most of its requests fail. Settings the engine was not
    /// sized for (more instances or memory than at start) are refused: they need a restart.
    pub(crate) async fn next_generation(
        self: &Arc<Self>,
        component: Option<LoadedComponent>,
        settings: Option<SlotConfig>,
    ) -> Result<SwapEvent, SwapError> {
        let started = std::time::Instant::now();
        let _one_at_a_time = self.swapping.lock().await;
        let old = self.current.load_full();
        let settings = match settings {
            Some(settings) => Arc::new(self.check(settings)?),
            None => old.settings.clone(),
        };
        let next = Arc::new(Generation::new(
            old.number + 1,
            component.unwrap_or_else(|| old.component.clone()),
            settings,
            &self.outbound,
            self.generations_alive.clone(),
        ));
        let mut probe = self.new_instance(&next);
        probe.store.data_mut().begin_request(
            "swap-probe",
            Deadline::after(next.settings.timeout),
            crate::telemetry::SpanHandle::default(),
        );
        probe.store.set_epoch_deadline(1);
        if let Err(err) = next.component.instantiate(&mut probe.store).await {
            let reason = format!("the new generation does not instantiate: {err:#}");
            tracing::error!(service = %self.started.service, %reason, "swap refused; the old generation keeps serving");
            self.record(
                &old,
                &next,
                SwapState::RolledBack,
                Some(reason.clone()),
                started,
            );
            return Err(SwapError::DoesNotInstantiate {
                service: self.started.service.clone(),
                reason,
            });
        }
        drop(probe);
        self.current.store(next.clone());
        self.stats.swaps.fetch_add(1, Ordering::Relaxed);
        self.idle.clear();
        if let Ok(mut previous) = self.previous.lock() {
            *previous = Some(old.clone());
        }
        let event = self.record(&old, &next, SwapState::Probation, None, started);
        tracing::info!(service = %self.started.service, generation = next.number, hash = &next.component.hash[..12], swap_us = event.swap_us, "swapped; new requests go to the new generation");
        let slot = self.clone();
        tokio::spawn(async move { slot.watch_probation(old, next).await });
        Ok(event)
    }

    /// Refuses settings this slot cannot take without a restart.
    pub(super) fn check(&self, settings: SlotConfig) -> Result<SlotConfig, SwapError> {
        let refuse = |reason: String| {
            Err(SwapError::Settings {
                service: self.started.service.clone(),
                reason,
            })
        };
        if settings.service != self.started.service || settings.version != self.started.version {
            return refuse(format!(
                "its name or version changed (to `{}` {}); that needs a restart",
                settings.service, settings.version
            ));
        }
        if settings.max_instances > self.started.max_instances {
            return refuse(format!(
                "max_instances = {} is more than the {} it started with, which sized the \
                 instance pool; restart the node to raise it",
                settings.max_instances, self.started.max_instances
            ));
        }
        if settings.memory_limit_bytes > self.engine.max_memory_bytes() {
            return refuse(format!(
                "memory_limit_mb = {} is more than the {} MiB the instance pool was sized for; \
                 restart the node to raise it",
                settings.memory_limit_bytes / (1024 * 1024),
                self.engine.max_memory_bytes() / (1024 * 1024)
            ));
        }
        Ok(settings)
    }

    pub(super) async fn watch_probation(
        self: Arc<Self>,
        old: Arc<Generation>,
        next: Arc<Generation>,
    ) {
        let probation = Probation::start(tokio::time::Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if self.current.load().number != next.number {
                return;
            }
            let errors = next.errors.load(Ordering::Relaxed);
            let served = next.served.load(Ordering::Relaxed);
            match probation.judge(errors, served, "requests", tokio::time::Instant::now()) {
                Verdict::Watching => {}
                Verdict::Passed => break,
                Verdict::RollBack(reason) => {
                    let _one_at_a_time = self.swapping.lock().await;
                    self.current.store(old.clone());
                    self.idle.clear();
                    tracing::error!(service = %self.started.service, from = next.number, back_to = old.number, %reason, "rolled back");
                    self.mark(next.number, SwapState::RolledBack, Some(reason));
                    self.stats.rollbacks.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        if let Ok(mut previous) = self.previous.lock() {
            *previous = None;
        }
        self.mark(next.number, SwapState::Serving, None);
    }

    pub(super) fn record(
        &self,
        old: &Generation,
        next: &Generation,
        state: SwapState,
        reason: Option<String>,
        started: std::time::Instant,
    ) -> SwapEvent {
        let event = SwapEvent {
            from_generation: old.number,
            to_generation: next.number,
            from_hash: old.component.hash.clone(),
            to_hash: next.component.hash.clone(),
            state,
            reason,
            swap_us: started.elapsed().as_micros() as u64,
        };
        if let Ok(mut last) = self.last_swap.lock() {
            *last = Some(event.clone());
        }
        event
    }

    pub(super) fn mark(&self, generation: u64, state: SwapState, reason: Option<String>) {
        if let Ok(mut last) = self.last_swap.lock()
            && let Some(event) = last.as_mut()
            && event.to_generation == generation
        {
            event.state = state;
            event.reason = reason;
        }
    }
}
