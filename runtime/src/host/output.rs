//! Guest stdout/stderr: kept in a bounded buffer that never fails a write (past the bound,
//! bytes are counted and dropped), then logged with the request id.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes of guest output kept per request.
const CAPACITY: usize = 16 * 1024;

#[derive(Clone, Default)]
pub(crate) struct GuestOutput {
    inner: Arc<Mutex<Buffer>>,
}

#[derive(Default)]
struct Buffer {
    kept: BytesMut,
    dropped: usize,
}

impl GuestOutput {
    fn append(&self, bytes: &[u8]) {
        let Ok(mut buffer) = self.inner.lock() else {
            return;
        };
        let room = CAPACITY.saturating_sub(buffer.kept.len());
        let kept = bytes.len().min(room);
        buffer.kept.extend_from_slice(&bytes[..kept]);
        buffer.dropped += bytes.len() - kept;
    }

    /// The message of the last Rust panic the guest printed (`thread '..' panicked at
    /// file:line:col:` and the message on the lines after it), at most 512 bytes; kept in the
    /// buffer for the log.
    pub(crate) fn panic_message(&self) -> Option<String> {
        let buffer = self.inner.lock().ok()?;
        let text = String::from_utf8_lossy(&buffer.kept);
        let (_, after) = text.rsplit_once(" panicked at ")?;
        let (_location, message) = after.split_once('\n')?;
        let message = message.split("\nnote: ").next().unwrap_or_default().trim();
        if message.is_empty() {
            return None;
        }
        let mut end = message.len().min(512);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        Some(message[..end].to_owned())
    }

    /// What the guest wrote (lossy UTF-8, trimmed), and how many bytes did not fit.
    pub(crate) fn take(&self) -> Option<(String, usize)> {
        let mut buffer = self.inner.lock().ok()?;
        if buffer.kept.is_empty() && buffer.dropped == 0 {
            return None;
        }
        let text = String::from_utf8_lossy(&buffer.kept).trim_end().to_owned();
        let dropped = buffer.dropped;
        *buffer = Buffer::default();
        Some((text, dropped))
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_panic_message_is_found_in_what_the_guest_printed() {
        let output = GuestOutput::default();
        assert_eq!(output.panic_message(), None);
        output.append(b"starting\nthread '<unnamed>' panicked at src/lib.rs:71:17:\nfirst\n");
        output.append(
            b"thread '<unnamed>' panicked at src/lib.rs:9:5:\nout of stock\nfor item 42\n\
              note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n",
        );
        assert_eq!(
            output.panic_message().as_deref(),
            Some("out of stock\nfor item 42")
        );
        // Peeking leaves the text for the log.
        assert!(
            output
                .take()
                .is_some_and(|(text, _)| text.contains("starting"))
        );
    }
}
