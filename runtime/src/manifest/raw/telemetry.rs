//! `[telemetry]`: metrics and request logs.

use std::net::SocketAddr;

use toml::Spanned;

use super::*;

pub(super) fn check_telemetry(
    check: &Checker<'_>,
    raw: Option<RawTelemetry>,
    node: &NodeSpec,
    services: &[ServiceSpec],
) -> Result<TelemetrySpec, ManifestError> {
    let Some(raw) = raw else {
        return Ok(TelemetrySpec::default());
    };
    let defaults = TelemetrySpec::default();
    let metrics = raw.metrics.unwrap_or(defaults.metrics);
    let metrics_addr = match raw.metrics_addr {
        None => None,
        Some(value) => Some(metrics_address(check, &value, node, metrics)?),
    };
    let request_log = match raw.request_log {
        None => defaults.request_log,
        Some(share) if (0.0..=1.0).contains(share.get_ref()) => *share.get_ref(),
        Some(share) => {
            return Err(check.invalid(
                share.span(),
                format!(
                    "`telemetry.request_log` = {} is not a share between 0 and 1",
                    share.get_ref()
                ),
                "write e.g. request_log = 0.01 (one in a hundred), 1 (all) or 0 (none)",
            ));
        }
    };
    let mut request_log_off = Vec::new();
    for name in raw.request_log_off {
        if !services.iter().any(|spec| spec.name == *name.get_ref()) {
            return Err(check.invalid(
                name.span(),
                format!(
                    "`telemetry.request_log_off` names `{}`, which is no [[service]] of this \
                     manifest",
                    name.get_ref()
                ),
                "name a service declared here, or remove it",
            ));
        }
        request_log_off.push(name.into_inner());
    }
    let otlp = check_otlp(
        check,
        raw.otlp,
        raw.otlp_protocol,
        raw.trace_sampling,
        raw.resource,
    )?;
    Ok(TelemetrySpec {
        metrics,
        metrics_addr,
        request_log,
        request_log_off,
        otlp,
    })
}

/// `otlp`, `otlp_protocol`, `trace_sampling` and `[telemetry.resource]`: the last three only
/// with the first.
fn check_otlp(
    check: &Checker<'_>,
    endpoint: Option<Spanned<String>>,
    protocol: Option<Spanned<String>>,
    sampling: Option<Spanned<f64>>,
    resource: Option<Spanned<std::collections::BTreeMap<String, String>>>,
) -> Result<Option<OtlpSpec>, ManifestError> {
    let Some(endpoint) = endpoint else {
        let stray = [
            protocol.as_ref().map(|p| ("otlp_protocol", p.span())),
            sampling.as_ref().map(|s| ("trace_sampling", s.span())),
            resource.as_ref().map(|r| ("resource", r.span())),
        ];
        if let Some((key, span)) = stray.into_iter().flatten().next() {
            return Err(check.invalid(
                span,
                format!("`telemetry.{key}` is set but `telemetry.otlp` is not"),
                "set otlp = \"http://collector:4318\" to export spans, or remove it",
            ));
        }
        return Ok(None);
    };
    let uri = endpoint.get_ref().parse::<http::Uri>().ok();
    match uri.as_ref().map(|uri| (uri.scheme_str(), uri.authority())) {
        Some((Some("http"), Some(_))) => {}
        Some((Some("https"), Some(_))) => {
            return Err(check.invalid(
                endpoint.span(),
                format!(
                    "`telemetry.otlp` = {:?}: this build exports over plain HTTP only",
                    endpoint.get_ref()
                ),
                "run a collector (or its agent) next to the node and name it http://...",
            ));
        }
        _ => {
            return Err(check.invalid(
                endpoint.span(),
                format!(
                    "`telemetry.otlp` = {:?} is not a collector's address",
                    endpoint.get_ref()
                ),
                "write e.g. otlp = \"http://127.0.0.1:4318\" (OTLP/HTTP) or, with \
                 otlp_protocol = \"grpc\", \"http://127.0.0.1:4317\"",
            ));
        }
    }
    let grpc = match protocol.as_ref().map(|p| p.get_ref().as_str()) {
        None | Some("http/protobuf") => false,
        Some("grpc") => true,
        Some(other) => {
            return Err(check.invalid(
                protocol.as_ref().map_or(endpoint.span(), Spanned::span),
                format!("`telemetry.otlp_protocol` = {other:?} is not an OTLP protocol"),
                "write \"http/protobuf\" (the default) or \"grpc\"",
            ));
        }
    };
    let sampling = match sampling {
        None => 1.0,
        Some(share) if (0.0..=1.0).contains(share.get_ref()) => *share.get_ref(),
        Some(share) => {
            return Err(check.invalid(
                share.span(),
                format!(
                    "`telemetry.trace_sampling` = {} is not a probability between 0 and 1",
                    share.get_ref()
                ),
                "write e.g. trace_sampling = 0.01 (one new trace in a hundred) or 1 (all)",
            ));
        }
    };
    Ok(Some(OtlpSpec {
        endpoint: endpoint.into_inner(),
        grpc,
        sampling,
        resource: resource.map(Spanned::into_inner).unwrap_or_default(),
    }))
}

fn metrics_address(
    check: &Checker<'_>,
    value: &Spanned<String>,
    node: &NodeSpec,
    metrics: bool,
) -> Result<SocketAddr, ManifestError> {
    if !metrics {
        return Err(check.invalid(
            value.span(),
            "`telemetry.metrics_addr` is set while metrics = false",
            "remove metrics_addr, or turn metrics on",
        ));
    }
    let addr = super::node::socket_address(check, value, "telemetry.metrics_addr")?;
    let taken = [("node.http", node.http), ("node.admin", node.admin)]
        .into_iter()
        .find(|(_, other)| *other == addr && addr.port() != 0);
    if let Some((key, _)) = taken {
        return Err(check.invalid(
            value.span(),
            format!("`telemetry.metrics_addr` and `{key}` are both {addr}"),
            "give the metrics listener its own port",
        ));
    }
    Ok(addr)
}
