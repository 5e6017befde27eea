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
    Ok(TelemetrySpec {
        metrics,
        metrics_addr,
        request_log,
        request_log_off,
    })
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
