//! W3C trace context (`traceparent: 00-<trace id>-<parent id>-<flags>`).
//!
//! The ingress continues a client's trace or starts one; every hop (a guest's request, each
//! call it makes, local or over QUIC) gets a child: the same trace id, a new parent id. So the
//! log lines of one user request share a `trace_id` across services and nodes.

/// A parsed `traceparent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TraceContext {
    trace_id: String,
    parent_id: String,
    flags: String,
}

/// The header that carries it.
pub(crate) const HEADER: &str = "traceparent";

impl TraceContext {
    /// Accepts version `00` with non-zero ids, as the W3C spec requires.
    pub(crate) fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace_id, parent_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
        let valid = parts.next().is_none()
            && version == "00"
            && hex(trace_id, 32)
            && nonzero(trace_id)
            && hex(parent_id, 16)
            && nonzero(parent_id)
            && hex(flags, 2);
        valid.then(|| Self {
            trace_id: trace_id.to_owned(),
            parent_id: parent_id.to_owned(),
            flags: flags.to_owned(),
        })
    }

    /// A new trace (sampled).
    pub(crate) fn root() -> Self {
        Self {
            trace_id: format!("{:032x}", fastrand::u128(1..)),
            parent_id: new_span_id(),
            flags: "01".to_owned(),
        }
    }

    /// The next hop of the same trace.
    pub(crate) fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id.clone(),
            parent_id: new_span_id(),
            flags: self.flags.clone(),
        }
    }

    pub(crate) fn trace_id(&self) -> &str {
        &self.trace_id
    }

    /// The `traceparent` header value.
    pub(crate) fn header(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.parent_id, self.flags)
    }
}

fn new_span_id() -> String {
    format!("{:016x}", fastrand::u64(1..))
}

#[cfg(test)]
mod tests {
    use super::TraceContext;

    #[test]
    fn valid_headers_parse_and_children_keep_the_trace_id() {
        let header = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let parsed = TraceContext::parse(header);
        assert_eq!(
            parsed.as_ref().map(TraceContext::header).as_deref(),
            Some(header)
        );
        let child = parsed.map(|p| p.child());
        assert!(
            child
                .as_ref()
                .is_some_and(|c| c.trace_id() == "0af7651916cd43dd8448eb211c80319c")
        );
        assert!(child.is_some_and(|c| c.header() != header));
        for bad in [
            "",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
        assert!(TraceContext::parse(&TraceContext::root().header()).is_some());
    }
}
