//! Raw bidirectional streams to another service's instance, for protocols of your own.
//!
//! The caller connects to a service (picked like a call: balancing, prefer-local) and opens
//! streams on that connection; the callee serves each stream in [`crate::Service::stream`] on
//! a fresh instance. Between nodes the bytes ride the mesh's authenticated QUIC connections.
//!
//! ```no_run
//! use std::io::{Read, Write};
//! use switchyard_sdk::quic;
//!
//! fn shout(text: &str) -> Result<String, quic::StreamError> {
//!     let connection = quic::connect("shouter@^1")?;
//!     let mut stream = connection.open_stream()?;
//!     stream.write_all(text.as_bytes())?;
//!     stream.finish()?;
//!     let answer = stream.read_to_end()?;
//!     Ok(String::from_utf8_lossy(&answer).into_owned())
//! }
//! ```
//!
//! `Stream` also implements [`std::io::Read`] and [`std::io::Write`], so any codec built on
//! them works.

use crate::bindings::switchyard::runtime::quic as wit;

pub use wit::StreamError;

impl From<StreamError> for std::io::Error {
    fn from(error: StreamError) -> Self {
        let kind = match error {
            StreamError::Timeout => std::io::ErrorKind::TimedOut,
            StreamError::Closed(_) => std::io::ErrorKind::ConnectionReset,
            StreamError::Unavailable(_) => std::io::ErrorKind::ConnectionRefused,
            StreamError::BadRequest(_) => std::io::ErrorKind::InvalidInput,
        };
        std::io::Error::new(kind, error)
    }
}

impl From<StreamError> for crate::Error {
    fn from(error: StreamError) -> Self {
        let status = match error {
            StreamError::Timeout => 504,
            StreamError::BadRequest(_) => 500,
            StreamError::Unavailable(_) => 503,
            StreamError::Closed(_) => 502,
        };
        let reason = match error {
            StreamError::Unavailable(m) => format!("stream unavailable: {m}"),
            StreamError::Timeout => "the stream's deadline passed".to_owned(),
            StreamError::Closed(m) => format!("stream closed: {m}"),
            StreamError::BadRequest(m) => format!("bad stream request: {m}"),
        };
        crate::Error::new(status, reason)
    }
}

/// A connection to one instance of a service.
pub struct Connection(wit::Connection);

/// Connects to `service` (`"name"` or `"name@<semver range>"`); streams opened on it may
/// live as long as what is left of the current request's deadline.
pub fn connect(service: &str) -> Result<Connection, StreamError> {
    wit::connect(service, None).map(Connection)
}

/// Like [`connect`], with each stream's lifetime capped at `timeout`.
pub fn connect_with_timeout(
    service: &str,
    timeout: std::time::Duration,
) -> Result<Connection, StreamError> {
    let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    wit::connect(service, Some(ms)).map(Connection)
}

impl Connection {
    /// Opens a stream; the callee's [`crate::Service::stream`] serves it.
    pub fn open_stream(&self) -> Result<Stream, StreamError> {
        self.0.open_stream().map(Stream)
    }

    /// The node this connection goes to.
    pub fn node(&self) -> String {
        self.0.node()
    }
}

/// One bidirectional byte stream. Dropping it closes both directions.
pub struct Stream(wit::BidiStream);

impl Stream {
    /// Wraps the stream the host hands to [`crate::Service::stream`].
    pub(crate) fn from_wit(stream: wit::BidiStream) -> Self {
        Self(stream)
    }

    /// Up to `max` bytes (at least one); `None` once the other side finished.
    pub fn read_chunk(&self, max: u32) -> Result<Option<Vec<u8>>, StreamError> {
        self.0.read(max)
    }

    /// Everything until the other side finishes.
    pub fn read_to_end(&self) -> Result<Vec<u8>, StreamError> {
        let mut all = Vec::new();
        while let Some(chunk) = self.0.read(64 * 1024)? {
            all.extend_from_slice(&chunk);
        }
        Ok(all)
    }

    /// Writes all of `bytes`.
    pub fn write_all(&self, bytes: &[u8]) -> Result<(), StreamError> {
        self.0.write(bytes)
    }

    /// Writes no more; the other side reads the end.
    pub fn finish(&self) -> Result<(), StreamError> {
        self.0.finish()
    }
}

impl std::io::Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let max = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        if max == 0 {
            return Ok(0);
        }
        match self.0.read(max)? {
            None => Ok(0),
            Some(chunk) => {
                let n = chunk.len().min(buf.len());
                buf[..n].copy_from_slice(&chunk[..n]);
                Ok(n)
            }
        }
    }
}

impl std::io::Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
