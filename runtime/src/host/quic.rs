//! `switchyard:runtime/quic`: raw bidirectional streams between guests.
//!
//! `connect` picks an instance of the service the way a call would ([`Calls::connect`]);
//! `open-stream` asks that node to serve a new stream with the callee's `stream-handler`.
//! Either way the guest holds a [`GuestStream`]: byte reader and writer halves, over QUIC
//! between nodes or an in-memory pipe on one node. Every read and write stops at the
//! stream's deadline, so a silent peer cannot hold an instance past its time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmtime::component::Resource;

#[cfg(doc)]
use super::Calls;
use super::HostState;
use super::bindings::imports::quic::{self as wit, StreamError};
use crate::call::{ByteStream, CallError, Connection, Target};

/// Reads return at most this much, whatever the guest asks for.
const MAX_READ: u32 = 64 * 1024;

/// A guest's connection: the instance its streams go to.
#[allow(
    unreachable_pub,
    reason = "bindgen re-exports it publicly; the module is private"
)]
pub struct GuestConnection {
    connection: Connection,
    /// How long each stream opened on it may live.
    budget: Duration,
}

/// One raw stream a guest holds.
#[allow(
    unreachable_pub,
    reason = "bindgen re-exports it publicly; the module is private"
)]
pub struct GuestStream {
    stream: ByteStream,
    finished: bool,
    deadline: Instant,
    /// The instance's count of streams it opened, counted down on drop (`None`: a stream a
    /// peer opened to this instance's handler).
    held: Option<Arc<AtomicU32>>,
}

impl Drop for GuestStream {
    fn drop(&mut self) {
        if let Some(held) = &self.held {
            held.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl HostState {
    /// Puts a stream a peer opened into this store, for the `stream-handler` export.
    pub(crate) fn adopt_stream(
        &mut self,
        stream: ByteStream,
        lifetime: Duration,
    ) -> wasmtime::Result<Resource<GuestStream>> {
        Ok(self.table.push(GuestStream {
            stream,
            finished: false,
            deadline: Instant::now() + lifetime,
            held: None,
        })?)
    }
}

impl From<CallError> for StreamError {
    fn from(error: CallError) -> Self {
        match error {
            CallError::Timeout => Self::Timeout,
            CallError::Unavailable(m) => Self::Unavailable(m),
            CallError::Remote(m) => Self::Closed(m),
            CallError::BadRequest(m) => Self::BadRequest(m),
            CallError::Rejected(m) => Self::Unavailable(format!("rejected: {m}")),
        }
    }
}

impl wit::Host for HostState {
    async fn connect(
        &mut self,
        service: String,
        timeout_ms: Option<u32>,
    ) -> Result<Resource<GuestConnection>, StreamError> {
        let remaining = self.deadline.remaining();
        let budget = timeout_ms.map_or(remaining, |ms| {
            remaining.min(Duration::from_millis(u64::from(ms)))
        });
        let target = Target::parse(&service)?;
        self.guest.may_call(&target.service)?;
        let connection = self.guest.calls.connect(target)?;
        self.table
            .push(GuestConnection { connection, budget })
            .map_err(|err| StreamError::Closed(err.to_string()))
    }
}

impl wit::HostConnection for HostState {
    async fn open_stream(
        &mut self,
        connection: Resource<GuestConnection>,
    ) -> wasmtime::Result<Result<Resource<GuestStream>, StreamError>> {
        let (target, budget) = {
            let connection = self.table.get(&connection)?;
            (connection.connection.clone(), connection.budget)
        };
        let limit = self.guest.max_open_streams;
        let held = self.open_streams.clone();
        if held.fetch_add(1, Ordering::Relaxed) >= limit {
            held.fetch_sub(1, Ordering::Relaxed);
            return Ok(Err(StreamError::Unavailable(format!(
                "this instance holds {limit} open streams already (max_open_streams of service \
                 `{}`); finish or drop some before opening more",
                self.guest.service
            ))));
        }
        // What is left of this request's time caps the stream too.
        let budget = budget.min(self.deadline.remaining());
        let calls = self.guest.calls.clone();
        let opened = calls
            .open_stream(&target, &self.guest.service, budget)
            .await;
        Ok(match opened {
            Ok(stream) => Ok(self.table.push(GuestStream {
                stream,
                finished: false,
                deadline: Instant::now() + budget,
                held: Some(held),
            })?),
            Err(error) => {
                held.fetch_sub(1, Ordering::Relaxed);
                Err(error.into())
            }
        })
    }

    fn node(&mut self, connection: Resource<GuestConnection>) -> wasmtime::Result<String> {
        Ok(self.table.get(&connection)?.connection.node.clone())
    }

    fn drop(&mut self, connection: Resource<GuestConnection>) -> wasmtime::Result<()> {
        self.table.delete(connection)?;
        Ok(())
    }
}

impl wit::HostBidiStream for HostState {
    async fn read(
        &mut self,
        stream: Resource<GuestStream>,
        max: u32,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, StreamError>> {
        let stream = self.table.get_mut(&stream)?;
        let mut buffer = vec![0u8; max.clamp(1, MAX_READ) as usize];
        let read = tokio::time::timeout_at(
            stream.deadline.into(),
            stream.stream.reader.read(&mut buffer),
        )
        .await;
        Ok(match read {
            Err(_) => Err(StreamError::Timeout),
            Ok(Err(err)) => Err(StreamError::Closed(err.to_string())),
            Ok(Ok(0)) => Ok(None),
            Ok(Ok(n)) => {
                buffer.truncate(n);
                Ok(Some(buffer))
            }
        })
    }

    async fn write(
        &mut self,
        stream: Resource<GuestStream>,
        bytes: Vec<u8>,
    ) -> wasmtime::Result<Result<(), StreamError>> {
        let stream = self.table.get_mut(&stream)?;
        if stream.finished {
            return Ok(Err(StreamError::Closed(
                "this side already called finish".into(),
            )));
        }
        let write = tokio::time::timeout_at(
            stream.deadline.into(),
            stream.stream.writer.write_all(&bytes),
        )
        .await;
        Ok(match write {
            Err(_) => Err(StreamError::Timeout),
            Ok(Err(err)) => Err(StreamError::Closed(err.to_string())),
            Ok(Ok(())) => Ok(()),
        })
    }

    async fn finish(
        &mut self,
        stream: Resource<GuestStream>,
    ) -> wasmtime::Result<Result<(), StreamError>> {
        let stream = self.table.get_mut(&stream)?;
        if stream.finished {
            return Ok(Ok(()));
        }
        stream.finished = true;
        let shutdown =
            tokio::time::timeout_at(stream.deadline.into(), stream.stream.writer.shutdown()).await;
        Ok(match shutdown {
            Err(_) => Err(StreamError::Timeout),
            Ok(Err(err)) => Err(StreamError::Closed(err.to_string())),
            Ok(Ok(())) => Ok(()),
        })
    }

    fn drop(&mut self, stream: Resource<GuestStream>) -> wasmtime::Result<()> {
        self.table.delete(stream)?;
        Ok(())
    }
}
