//! What crosses the network between nodes or is stored for later, sans IO: frames
//! (length-prefixed, versioned postcard), the mesh's [`Member`] records, and a message's
//! [`MessageKind`]. [`frame`] is tested and fuzzed alone; the
//! conversions between a frame and the call vocabulary ([`crate::call`]) are written once,
//! here, as `From`s.

pub(crate) mod frame;
mod message;

pub(crate) use crate::call::{CAUSATION_CHAIN_HEADER, CAUSATION_DEPTH_HEADER, Causation};
pub(crate) use frame::{FailureKind, Frame};
pub(crate) use message::{Delivered, MessageKind, Outgoing, Receipt, SendError, StoredMessage};

use crate::call::{Call, CallError, Deadline, Reply, Target};
use crate::telemetry::TRACE_HEADER;

impl From<Call> for Frame {
    /// The call as a frame for the node that runs its callee, with the time left of its
    /// deadline.
    fn from(call: Call) -> Self {
        let (trace, headers): (Vec<_>, Vec<_>) = call
            .headers
            .into_iter()
            .partition(|(header, _)| header == TRACE_HEADER);
        Frame::Call {
            service: call.target.service,
            range: call.target.range.map(|range| range.to_string()),
            method: call.method,
            headers,
            body: call.body,
            deadline_ms: call.deadline.remaining_ms(),
            caller: call.caller,
            request_id: call.request_id,
            trace_context: trace.into_iter().next().map(|(_, value)| value),
            causation_depth: call.causation.depth,
            causation_chain: call.causation.chain,
        }
    }
}

impl TryFrom<Frame> for Call {
    type Error = CallError;

    /// The call a `Call` frame carries, its deadline counted from now.
    fn try_from(frame: Frame) -> Result<Self, CallError> {
        let Frame::Call {
            service,
            range,
            method,
            mut headers,
            body,
            deadline_ms,
            caller,
            request_id,
            trace_context,
            causation_depth,
            causation_chain,
        } = frame
        else {
            return Err(CallError::BadRequest(format!(
                "a peer sent a {} frame where a call was expected",
                frame.kind()
            )));
        };
        headers.extend(trace_context.map(|value| (TRACE_HEADER.to_owned(), value)));
        Ok(Call {
            target: target(service, range)?,
            method,
            body,
            headers,
            deadline: Deadline::after(std::time::Duration::from_millis(u64::from(deadline_ms))),
            caller,
            request_id,
            spread: None,
            causation: crate::call::Causation {
                depth: causation_depth,
                chain: causation_chain,
            },
        })
    }
}

/// A frame's service and range as a call's target.
pub(crate) fn target(service: String, range: Option<String>) -> Result<Target, CallError> {
    let range = match range {
        Some(range) => Some(semver::VersionReq::parse(&range).map_err(|err| {
            CallError::BadRequest(format!(
                "a peer asked for service `{service}` at `{range}`, not a semver range ({err})"
            ))
        })?),
        None => None,
    };
    Ok(Target { service, range })
}

impl From<Reply> for Frame {
    fn from(reply: Reply) -> Self {
        Frame::Reply {
            status: reply.status,
            headers: reply.headers,
            body: reply.body,
        }
    }
}

impl From<CallError> for Frame {
    fn from(error: CallError) -> Self {
        let (kind, message) = match error {
            CallError::Timeout => (FailureKind::Timeout, String::new()),
            CallError::Unavailable(m) => (FailureKind::Unavailable, m),
            CallError::Remote(m) => (FailureKind::Remote, m),
            CallError::BadRequest(m) => (FailureKind::BadRequest, m),
            CallError::Rejected(m) => (FailureKind::Rejected, m),
        };
        Frame::Failed { kind, message }
    }
}

impl From<Frame> for Result<Reply, CallError> {
    /// A peer's answer to a call: its reply, its failure, or a protocol error naming what it
    /// sent instead.
    fn from(frame: Frame) -> Self {
        match frame {
            Frame::Reply {
                status,
                headers,
                body,
            } => Ok(Reply {
                status,
                headers,
                body,
            }),
            Frame::Failed { kind, message } => Err(match kind {
                FailureKind::Timeout => CallError::Timeout,
                FailureKind::Unavailable => CallError::Unavailable(message),
                FailureKind::Remote => CallError::Remote(message),
                FailureKind::BadRequest => CallError::BadRequest(message),
                FailureKind::Rejected => CallError::Rejected(message),
            }),
            other => Err(CallError::Remote(format!(
                "the peer answered with a {} frame",
                other.kind()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_call_survives_the_frame_with_its_range_trace_and_time_left() {
        let call = Call {
            target: Target::parse("inventory@^1.2").unwrap_or_else(|_| Target::any("x")),
            method: "GET /items/42".into(),
            body: b"hi".to_vec(),
            headers: vec![
                ("x-a".into(), "b".into()),
                (
                    TRACE_HEADER.into(),
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                ),
            ],
            deadline: Deadline::after(std::time::Duration::from_millis(300)),
            caller: "orders".into(),
            request_id: "r.1".into(),
            spread: None,
            causation: Default::default(),
        };
        tokio::time::advance(std::time::Duration::from_millis(100)).await;
        let frame = Frame::from(call.clone());
        let bytes = frame::encode(&frame).unwrap_or_default();
        let back = frame::decode(&bytes)
            .map_err(|err| CallError::Remote(err.to_string()))
            .and_then(Call::try_from);
        let Ok(back) = back else {
            panic!("round trip failed: {back:?}");
        };
        assert_eq!(back.target, call.target, "the range survives");
        assert_eq!(back.deadline.remaining_ms(), 200, "the time left travels");
        assert_eq!(back.headers, call.headers);
        assert_eq!((back.method, back.body), (call.method, call.body));
    }

    #[test]
    fn every_call_error_survives_the_frame_and_other_frames_are_named_not_dumped() {
        for error in [
            CallError::Timeout,
            CallError::Unavailable("u".into()),
            CallError::Remote("r".into()),
            CallError::BadRequest("b".into()),
            CallError::Rejected("p".into()),
        ] {
            assert_eq!(
                Result::from(Frame::from(error.clone())),
                Err::<Reply, _>(error)
            );
        }
        let gossip = Frame::Gossip { members: vec![] };
        assert_eq!(
            Result::<Reply, CallError>::from(gossip),
            Err(CallError::Remote(
                "the peer answered with a gossip frame".into()
            ))
        );
    }
}
