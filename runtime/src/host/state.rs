//! `switchyard:runtime/state`: a service's own keys and its transactional outbox, through the
//! [`super::StateStore`] port. Reads run inline (the store answers from its cache or one
//! read); commits wait for their fsync off the executor (the store's side of the port).

use super::bindings::imports::messaging::SendError as WitSendError;
use super::bindings::imports::state::{self as wit, Entry, Page};
use super::{HostState, OutboxMessage, StateEntry, StateError, Transaction};

impl From<StateError> for wit::StateError {
    fn from(err: StateError) -> Self {
        match err {
            StateError::Conflict(why) => Self::Conflict(why),
            StateError::TooLarge(why) => Self::TooLarge(why),
            StateError::Invalid(why) => Self::Invalid(why),
            StateError::Unavailable(why) => Self::Unavailable(why),
        }
    }
}

impl From<StateEntry> for Entry {
    fn from(entry: StateEntry) -> Self {
        Self {
            key: entry.key,
            value: entry.value,
            version: entry.version,
        }
    }
}

impl HostState {
    async fn commit_for_guest(
        &mut self,
        transaction: Transaction,
    ) -> Result<super::Committed, wit::StateError> {
        let store = self.guest.state.clone();
        let committed = store
            .commit(&self.guest.service, self.guest.state_max_bytes, transaction)
            .await?;
        Ok(committed)
    }
}

impl wit::Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Entry>, wit::StateError> {
        Ok(self
            .guest
            .state
            .get(&self.guest.service, &key)?
            .map(Entry::from))
    }

    async fn put(&mut self, key: String, value: Vec<u8>) -> Result<u64, wit::StateError> {
        let transaction = Transaction {
            writes: vec![(key, Some(value))],
            ..Transaction::default()
        };
        Ok(self.commit_for_guest(transaction).await?.version)
    }

    async fn delete(&mut self, key: String) -> Result<bool, wit::StateError> {
        let transaction = Transaction {
            writes: vec![(key, None)],
            ..Transaction::default()
        };
        Ok(self.commit_for_guest(transaction).await?.removed > 0)
    }

    async fn scan(
        &mut self,
        prefix: String,
        after: Option<String>,
        limit: u32,
    ) -> Result<Page, wit::StateError> {
        let page = self.guest.state.scan(
            &self.guest.service,
            &prefix,
            after.as_deref(),
            limit as usize,
        )?;
        Ok(Page {
            entries: page.entries.into_iter().map(Entry::from).collect(),
            next: page.next,
        })
    }

    async fn commit(
        &mut self,
        transaction: wit::Transaction,
    ) -> Result<wit::Committed, wit::StateError> {
        let mut messages = Vec::with_capacity(transaction.messages.len());
        for sent in transaction.messages {
            // The same checks and stamps as a direct send: size, node headers, causation.
            let (message, span) = self
                .outgoing("outbox", &sent.destination, sent.message)
                .map_err(|err| match err {
                    WitSendError::TooLarge(why) => wit::StateError::TooLarge(why),
                    WitSendError::UnknownQueue(why)
                    | WitSendError::Full(why)
                    | WitSendError::Unavailable(why) => wit::StateError::Invalid(why),
                })?;
            messages.push(OutboxMessage {
                destination: sent.destination,
                trace_context: Some(span.trace().header()),
                message,
            });
        }
        let transaction = Transaction {
            reads: transaction
                .reads
                .into_iter()
                .map(|read| (read.key, read.version))
                .collect(),
            writes: transaction
                .writes
                .into_iter()
                .map(|write| (write.key, write.value))
                .collect(),
            messages,
        };
        let committed = self.commit_for_guest(transaction).await?;
        Ok(wit::Committed {
            version: committed.version,
            message_ids: committed.message_ids,
        })
    }
}
