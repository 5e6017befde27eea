//! `[telemetry]`: metrics.

use std::net::SocketAddr;

use toml::Spanned;

use super::*;

pub(super) fn check_telemetry(
    check: &Checker<'_>,
    raw: Option<RawTelemetry>,
    node: &NodeSpec,
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
    Ok(TelemetrySpec {
        metrics,
        metrics_addr,
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
    let addr = value.get_ref().parse::<SocketAddr>().map_err(|err| {
        check.invalid(
            value.span(),
            format!(
                "`telemetry.metrics_addr` = {:?} is not a socket address: {err}",
                value.get_ref()
            ),
            "write IP:PORT, e.g. \"127.0.0.1:9464\" (0 picks a free port)",
        )
    })?;
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
