//! W3C trace context (`traceparent: 00-<trace id>-<parent id>-<flags>`).
//!
//! The ingress continues a client's trace or starts one; every hop (a guest's request, each
//! call it makes, local or over QUIC, each message it sends) gets a child: the same trace id,
//! a new parent id. So the log lines of one user request share a `trace_id` across services
//! and nodes, and the spans [`super::Traces`] exports join into one trace.

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

/// A parsed `traceparent`: the span a hop's children name as their parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceContext {
    trace_id: TraceId,
    span_id: SpanId,
    flags: TraceFlags,
}

/// The header that carries it.
pub(crate) const HEADER: &str = "traceparent";

impl TraceContext {
    /// Accepts version `00` with non-zero ids, as the W3C spec requires.
    pub(crate) fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace_id, span_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if parts.next().is_some()
            || version != "00"
            || !hex(trace_id, 32)
            || !hex(span_id, 16)
            || !hex(flags, 2)
        {
            return None;
        }
        let trace_id = u128::from_str_radix(trace_id, 16).ok()?;
        let span_id = u64::from_str_radix(span_id, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != 0 && span_id != 0).then(|| Self {
            trace_id: TraceId::from(trace_id),
            span_id: SpanId::from(span_id),
            flags: TraceFlags::new(flags),
        })
    }

    /// The context `headers` carry, if a valid one.
    pub(crate) fn in_headers(headers: &[(String, String)]) -> Option<Self> {
        headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(HEADER))
            .and_then(|(_, value)| Self::parse(value))
    }

    /// Sets `headers`' context to this one, replacing any.
    pub(crate) fn set_in(&self, headers: &mut Vec<(String, String)>) {
        headers.retain(|(name, _)| !name.eq_ignore_ascii_case(HEADER));
        headers.push((HEADER.to_owned(), self.header()));
    }

    /// A new trace, not recorded by this node (no exporter, or the sampler said no).
    pub(crate) fn root() -> Self {
        Self {
            trace_id: TraceId::from(fastrand::u128(1..)),
            span_id: SpanId::from(fastrand::u64(1..)),
            flags: TraceFlags::NOT_SAMPLED,
        }
    }

    /// The next hop of the same trace, not recorded by this node.
    pub(crate) fn child(&self) -> Self {
        Self {
            span_id: SpanId::from(fastrand::u64(1..)),
            ..*self
        }
    }

    /// Whether the trace's recorder asked for it to be recorded (flag `01`).
    pub(crate) fn is_sampled(&self) -> bool {
        self.flags.is_sampled()
    }

    /// 32 lowercase hex digits.
    pub(crate) fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The `traceparent` header value.
    ///
    /// Written digit by digit rather than with `format!`: every hop (a call, a message, each
    /// delivery) makes one, and `format!`'s hex of a `u128` cost several times the rest.
    pub(crate) fn header(&self) -> String {
        let mut header = [b'-'; 55];
        header[..2].copy_from_slice(b"00");
        let fields: [(&[u8], std::ops::Range<usize>); 3] = [
            (&self.trace_id.to_bytes(), 3..35),
            (&self.span_id.to_bytes(), 36..52),
            (&[self.flags.to_u8()], 53..55),
        ];
        for (bytes, at) in fields {
            // Each range is exactly twice its field's bytes long.
            let _ = hex::encode_to_slice(bytes, &mut header[at]);
        }
        // Hex digits and dashes only: always UTF-8.
        String::from_utf8_lossy(&header).into_owned()
    }

    /// The same context as OpenTelemetry's parent of a span (it came from elsewhere).
    pub(super) fn as_remote_parent(&self) -> SpanContext {
        SpanContext::new(
            self.trace_id,
            self.span_id,
            self.flags,
            true,
            TraceState::NONE,
        )
    }

    /// The context a span of this node's tracer gave itself.
    pub(super) fn of(span: &SpanContext) -> Self {
        Self {
            trace_id: span.trace_id(),
            span_id: span.span_id(),
            flags: span.trace_flags(),
        }
    }
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
                .is_some_and(|c| c.trace_id().to_string() == "0af7651916cd43dd8448eb211c80319c")
        );
        assert!(child.is_some_and(|c| c.header() != header));
        for bad in [
            "",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
            "00-0af7651916cd43dd8448eb211c80319c-+7ad6b7169203331-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
        assert!(TraceContext::parse(&TraceContext::root().header()).is_some());
        let small = "00-0000000000000000000000000000000a-000000000000000b-00";
        assert_eq!(
            TraceContext::parse(small).map(|c| c.header()).as_deref(),
            Some(small),
            "leading zeros are kept"
        );
    }

    #[test]
    fn a_header_is_what_the_w3c_format_spells() {
        for _ in 0..1000 {
            let context = TraceContext::root().child();
            let flags = if fastrand::bool() { "01" } else { "00" };
            let spelled = format!(
                "00-{:032x}-{:016x}-{flags}",
                u128::from_be_bytes(context.trace_id.to_bytes()),
                u64::from_be_bytes(context.span_id.to_bytes()),
            );
            let parsed = TraceContext::parse(&spelled);
            assert_eq!(parsed.map(|c| c.header()), Some(spelled));
        }
    }
}
