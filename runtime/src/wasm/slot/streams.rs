//! Raw streams served by a slot's `stream-handler`, within the same limits as requests.

use super::*;

impl Slot {
    /// Fails unless the component serves streams.
    pub(crate) fn check_streams(&self) -> Result<(), SlotError> {
        match self.current.load().component.streams() {
            Some(_) => Ok(()),
            None => Err(SlotError::NoStreams {
                service: self.started.service.clone(),
            }),
        }
    }

    /// Admits a raw stream (a free instance, a `stream-handler` export) and serves it on a
    /// fresh instance in the background, for at most the smaller of `budget` and the
    /// service's timeout. Refuses at once, like a request, when the service is at
    /// `max_instances`.
    pub(crate) fn serve_stream(
        self: &Arc<Self>,
        stream: ByteStream,
        caller: String,
        budget: Duration,
    ) -> Result<(), SlotError> {
        self.check_streams()?;
        self.accepts(&caller)?;
        let in_flight = self.admit()?;
        let slot = self.clone();
        tokio::spawn(async move {
            let _in_flight = in_flight;
            let request_id = format!("stream-{}", fastrand::u64(..));
            let result = slot.run_stream(stream, &caller, &request_id, budget).await;
            match &result {
                Ok(()) => slot.stats.served.fetch_add(1, Ordering::Relaxed),
                Err(error) => {
                    tracing::warn!(service = %slot.started.service, %caller, %error, "stream handler failed");
                    slot.stats.errors.fetch_add(1, Ordering::Relaxed)
                }
            };
        });
        Ok(())
    }

    pub(super) async fn run_stream(
        &self,
        stream: ByteStream,
        caller: &str,
        request_id: &str,
        budget: Duration,
    ) -> Result<(), SlotError> {
        let generation = self.current.load_full();
        let Some(pre) = generation.component.streams() else {
            return self.check_streams();
        };
        let timeout = budget.min(generation.settings.timeout);
        let mut live = self.new_instance(&generation);
        live.store.data_mut().begin_request(
            request_id,
            Deadline::after(timeout),
            crate::telemetry::SpanHandle::default(),
        );
        live.store.set_epoch_deadline(1);
        let store = &mut live.store;
        let call = async {
            let resource = store.data_mut().adopt_stream(stream, timeout)?;
            let instance = pre.instantiate_async(&mut *store).await?;
            instance
                .switchyard_runtime_stream_handler()
                .call_handle_stream(&mut *store, resource, caller)
                .await
        };
        let outcome = tokio::time::timeout(timeout, call).await;
        let result = self.outcome(outcome, &live.store, timeout, &generation.settings);
        self.log_output(&live.store, request_id);
        result
    }
}
