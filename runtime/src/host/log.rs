//! `switchyard:runtime/log`: guest lines go to the node's log under target `guest`, with the
//! service and request id as fields.

use super::bindings::imports::log::{self, Level};
use super::{HostState, PolicyState};
use crate::telemetry::KeyValue;

/// Guest messages are cut here so one guest cannot flood the log with a single line.
const MAX_MESSAGE_BYTES: usize = 8 * 1024;
/// Bytes of log messages one request (or delivery) may write; past it lines are dropped and
/// counted, and one line at the end of the request says how many.
pub(crate) const MAX_REQUEST_LOG_BYTES: usize = 64 * 1024;
/// Bytes of log messages one policy decision may write: a decision runs for every call, so
/// its budget is far smaller than a request's.
pub(crate) const MAX_DECISION_LOG_BYTES: usize = 4 * 1024;

/// What is left of the current request's log budget, and what was dropped past it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogBudget {
    left: usize,
    dropped_lines: u64,
    dropped_bytes: u64,
}

impl Default for LogBudget {
    fn default() -> Self {
        Self::new(MAX_REQUEST_LOG_BYTES)
    }
}

impl LogBudget {
    pub(crate) fn new(bytes: usize) -> Self {
        Self {
            left: bytes,
            dropped_lines: 0,
            dropped_bytes: 0,
        }
    }

    /// Whether a message of `bytes` still fits; if not, it is counted as dropped.
    fn spend(&mut self, bytes: usize) -> bool {
        if bytes <= self.left {
            self.left -= bytes;
            return true;
        }
        self.left = 0;
        self.dropped_lines += 1;
        self.dropped_bytes += bytes as u64;
        false
    }

    /// Writes `message` (cut to [`MAX_MESSAGE_BYTES`]) to the log if it fits what is left.
    fn write(&mut self, guest: &str, request_id: &str, level: Level, message: &str) {
        let message = truncate(message, MAX_MESSAGE_BYTES);
        if self.spend(message.len()) {
            write(guest, request_id, level, message);
        }
    }

    /// Lines and bytes dropped since the budget was set, if any.
    pub(crate) fn dropped(&self) -> Option<(u64, u64)> {
        (self.dropped_lines > 0).then_some((self.dropped_lines, self.dropped_bytes))
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        if spanned(level) {
            self.span.event("log", || {
                vec![
                    KeyValue::new("log.level", label(level)),
                    KeyValue::new(
                        "log.message",
                        truncate(&message, MAX_MESSAGE_BYTES).to_owned(),
                    ),
                ]
            });
        }
        let budget = &mut self.log_budget;
        budget.write(&self.guest.service, &self.request_id, level, &message);
    }

    /// A recorded span takes info and above whatever the node's log filter says.
    fn enabled(&mut self, level: Level) -> bool {
        enabled(level) || (self.span.is_recording() && spanned(level))
    }
}

impl log::Host for PolicyState {
    fn log(&mut self, level: Level, message: String) {
        self.log_budget.write(&self.name, "", level, &message);
    }

    fn enabled(&mut self, level: Level) -> bool {
        enabled(level)
    }
}

fn write(service: &str, request_id: &str, level: Level, message: &str) {
    let message = truncate(message, MAX_MESSAGE_BYTES);
    match level {
        Level::Trace => tracing::trace!(target: "guest", service, request_id, "{message}"),
        Level::Debug => tracing::debug!(target: "guest", service, request_id, "{message}"),
        Level::Info => tracing::info!(target: "guest", service, request_id, "{message}"),
        Level::Warn => tracing::warn!(target: "guest", service, request_id, "{message}"),
        Level::Error => tracing::error!(target: "guest", service, request_id, "{message}"),
    }
}

/// Whether a line at `level` becomes an event of the work's span (when it is recorded):
/// debug and trace lines stay in the log, where the filter decides.
fn spanned(level: Level) -> bool {
    matches!(level, Level::Info | Level::Warn | Level::Error)
}

fn label(level: Level) -> &'static str {
    match level {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

fn enabled(level: Level) -> bool {
    match level {
        Level::Trace => tracing::enabled!(target: "guest", tracing::Level::TRACE),
        Level::Debug => tracing::enabled!(target: "guest", tracing::Level::DEBUG),
        Level::Info => tracing::enabled!(target: "guest", tracing::Level::INFO),
        Level::Warn => tracing::enabled!(target: "guest", tracing::Level::WARN),
        Level::Error => tracing::enabled!(target: "guest", tracing::Level::ERROR),
    }
}

/// The longest prefix of `text` within `max` bytes that ends on a character boundary.
pub(crate) fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
