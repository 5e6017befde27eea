//! `[node]`: addresses, TLS and discovery.

use std::net::SocketAddr;
use std::time::Duration;

use crate::manifest::IngressLimits;

use toml::Spanned;

use super::*;

pub(super) fn check_node(
    check: &Checker<'_>,
    raw: Option<RawNode>,
) -> Result<NodeSpec, ManifestError> {
    let raw = raw.unwrap_or(RawNode {
        name: None,
        http: None,
        admin: None,
        admin_token_file: None,
        max_connections: None,
        idle_timeout_ms: None,
        body_budget_mb: None,
        max_header_kb: None,
        max_concurrent_streams: None,
        stream_window_kb: None,
        connection_window_kb: None,
        max_pending_resets: None,
        keepalive_ms: None,
        http_tls: None,
        max_instances: None,
        max_memory_mb: None,
        data_dir: None,
        quic: None,
        advertise: None,
        seeds: Vec::new(),
        tls: None,
        discovery: None,
    });
    let name = match raw.name {
        Some(name) => {
            check_name(check, &name, "node")?;
            name.into_inner()
        }
        None => "switchyard".to_owned(),
    };
    let socket =
        |value: &Spanned<String>, key: &str| socket_address(check, value, &format!("node.{key}"));
    let address = |value: Option<Spanned<String>>, default: &str, key: &str| match value {
        None => default
            .parse::<SocketAddr>()
            .map_err(|err| check.invalid(0..0, format!("default {key}: {err}"), "report a bug")),
        Some(value) => socket(&value, key),
    };
    let admin_span = raw.admin.as_ref().map_or(0..0, Spanned::span);
    let http = address(raw.http, defaults::HTTP, "http")?;
    let admin = address(raw.admin, defaults::ADMIN, "admin")?;
    if http == admin && http.port() != 0 {
        return Err(check.invalid(
            admin_span,
            format!("`node.admin` and `node.http` are both {http}"),
            "give the admin API its own port",
        ));
    }
    let data_dir = check.resolve(raw.data_dir.as_deref().unwrap_or(defaults::DATA_DIR));
    let admin_token_file = raw
        .admin_token_file
        .as_deref()
        .map(|path| check.resolve(path));
    let quic = raw
        .quic
        .as_ref()
        .map(|quic| socket(quic, "quic"))
        .transpose()?;
    let seeds = raw
        .seeds
        .iter()
        .map(|seed| socket(seed, "seeds"))
        .collect::<Result<Vec<_>, _>>()?;
    if quic.is_none() && !raw.seeds.is_empty() {
        return Err(check.invalid(
            raw.seeds[0].span(),
            "`node.seeds` needs `node.quic`: peers are reached over QUIC",
            "add e.g. quic = \"127.0.0.1:7000\" to [node]",
        ));
    }
    let discovery = check_discovery(check, raw.discovery, quic.is_some())?;
    if let (DiscoverySpec::Etcd { .. }, Some(seed)) = (&discovery, raw.seeds.first()) {
        return Err(check.invalid(
            seed.span(),
            "`node.seeds` is for the embedded discovery backend, but `[node.discovery]` chose etcd",
            "remove `seeds`: with etcd every node finds the others through etcd",
        ));
    }
    let advertise = check_advertise(check, raw.advertise.as_ref(), raw.quic.as_ref(), quic)?;
    let tls = raw.tls.map(|tls| check_tls(check, tls)).transpose()?;
    let ingress = IngressLimits {
        max_connections: super::services::bounded(
            check,
            raw.max_connections,
            defaults::MAX_CONNECTIONS,
            1..=1_000_000,
            "max_connections",
        )?,
        idle_timeout: Duration::from_millis(super::services::bounded(
            check,
            raw.idle_timeout_ms,
            defaults::IDLE_TIMEOUT_MS,
            100..=3_600_000,
            "idle_timeout_ms",
        )?),
        body_budget_bytes: super::services::mebibytes(super::services::bounded(
            check,
            raw.body_budget_mb,
            defaults::BODY_BUDGET_MB,
            1..=1_048_576,
            "body_budget_mb",
        )?),
        max_header_bytes: super::services::bounded(
            check,
            raw.max_header_kb,
            defaults::MAX_HEADER_KB,
            1..=1024,
            "max_header_kb",
        )? * 1024,
        max_concurrent_streams: super::services::bounded(
            check,
            raw.max_concurrent_streams,
            defaults::MAX_CONCURRENT_STREAMS,
            1..=100_000,
            "max_concurrent_streams",
        )?,
        // HTTP/2 caps a window at 2^31 - 1 bytes.
        stream_window_bytes: super::services::bounded(
            check,
            raw.stream_window_kb,
            defaults::WINDOW_KB,
            16..=2_097_151,
            "stream_window_kb",
        )? * 1024,
        connection_window_bytes: super::services::bounded(
            check,
            raw.connection_window_kb,
            defaults::WINDOW_KB,
            // Every HTTP/2 connection starts with a 64 KiB window; it may only grow from there.
            64..=2_097_151,
            "connection_window_kb",
        )? * 1024,
        max_pending_resets: super::services::bounded(
            check,
            raw.max_pending_resets,
            defaults::MAX_PENDING_RESETS,
            1..=100_000,
            "max_pending_resets",
        )?,
        keepalive: Duration::from_millis(super::services::bounded(
            check,
            raw.keepalive_ms,
            defaults::KEEPALIVE_MS,
            1000..=3_600_000,
            "keepalive_ms",
        )?),
    };
    let http_tls = raw
        .http_tls
        .map(|tls| check_http_tls(check, tls))
        .transpose()?;
    let pool = crate::manifest::PoolBudget {
        max_instances: super::services::bounded(
            check,
            raw.max_instances,
            defaults::NODE_MAX_INSTANCES,
            1..=1_000_000,
            "max_instances",
        )?,
        max_memory_bytes: super::services::mebibytes(super::services::bounded(
            check,
            raw.max_memory_mb,
            defaults::NODE_MAX_MEMORY_MB,
            1..=1 << 30,
            "max_memory_mb",
        )?) as u64,
    };
    if !admin.ip().is_loopback() && tls.is_none() {
        return Err(check.invalid(
            admin_span,
            format!(
                "`node.admin` = {admin} is off loopback, and the admin API (which can swap any \
                 service) is served off loopback only over TLS"
            ),
            "set [node.tls] (the admin API is then served over TLS with the node's certificate), \
             or bind the admin API to loopback, e.g. admin = \"127.0.0.1:9090\"",
        ));
    }
    Ok(NodeSpec {
        name,
        http,
        admin,
        admin_token_file,
        ingress,
        http_tls,
        pool,
        data_dir,
        quic,
        advertise,
        seeds,
        tls,
        discovery,
    })
}

/// A socket address under manifest key `key` (`node.http`), or an error at its place saying
/// the form.
pub(super) fn socket_address(
    check: &Checker<'_>,
    value: &Spanned<String>,
    key: &str,
) -> Result<SocketAddr, ManifestError> {
    value.get_ref().parse::<SocketAddr>().map_err(|err| {
        check.invalid(
            value.span(),
            format!(
                "`{key}` = {:?} is not a socket address: {err}",
                value.get_ref()
            ),
            "write IP:PORT, e.g. \"127.0.0.1:8080\" or \"0.0.0.0:0\" (0 picks a free port)",
        )
    })
}

/// `node.advertise`, and whether peers can reach the node at all: it needs `quic`, must be a
/// concrete IP, and is required when `quic` listens on every interface.
fn check_advertise(
    check: &Checker<'_>,
    advertise: Option<&Spanned<String>>,
    quic_raw: Option<&Spanned<String>>,
    quic: Option<SocketAddr>,
) -> Result<Option<SocketAddr>, ManifestError> {
    let advertise = match advertise {
        None => None,
        Some(value) => {
            let advertise = socket_address(check, value, "node.advertise")?;
            if quic.is_none() {
                return Err(check.invalid(
                    value.span(),
                    "`node.advertise` needs `node.quic`: it is the address peers dial for it",
                    "add e.g. quic = \"0.0.0.0:7000\" to [node], or remove `advertise`",
                ));
            }
            if advertise.ip().is_unspecified() {
                return Err(check.invalid(
                    value.span(),
                    format!(
                        "`node.advertise` = {advertise} is not an address other nodes can reach"
                    ),
                    "give the IP peers dial for this node, e.g. \"10.0.0.5:7000\" (port 0: the \
                     port `quic` is bound to)",
                ));
            }
            Some(advertise)
        }
    };
    if let Some(quic) = quic
        && quic.ip().is_unspecified()
        && advertise.is_none()
    {
        let span = quic_raw.map_or(0..0, Spanned::span);
        return Err(check.invalid(
            span,
            format!("`node.quic` = {quic} is not an address other nodes can reach"),
            "other nodes dial the address a node announces: give a concrete IP, e.g. \
             \"10.0.0.5:7000\" or \"127.0.0.1:7000\", or keep {quic} and add \
             advertise = \"10.0.0.5:7000\" (the address peers dial)",
        ));
    }
    Ok(advertise)
}

/// `[node.tls]`: the three PEM files, which must exist.
fn check_tls(check: &Checker<'_>, tls: Spanned<RawTls>) -> Result<TlsSpec, ManifestError> {
    let span = tls.span();
    let tls = tls.into_inner();
    let paths = TlsSpec {
        ca: check.resolve(&tls.ca),
        cert: check.resolve(&tls.cert),
        key: check.resolve(&tls.key),
    };
    for path in [&paths.ca, &paths.cert, &paths.key] {
        if !path.is_file() {
            return Err(check.invalid(
                span.clone(),
                format!("TLS file {} does not exist", path.display()),
                "create them with `switchyard cert ca` and `switchyard cert node <name>`",
            ));
        }
    }
    Ok(paths)
}

/// `[node] http_tls`: the certificate and key files, and the client CA if given, must exist.
fn check_http_tls(
    check: &Checker<'_>,
    tls: Spanned<RawHttpTls>,
) -> Result<HttpTlsSpec, ManifestError> {
    let span = tls.span();
    let tls = tls.into_inner();
    let spec = HttpTlsSpec {
        cert: check.resolve(&tls.cert),
        key: check.resolve(&tls.key),
        client_ca: tls.client_ca.as_deref().map(|ca| check.resolve(ca)),
    };
    for path in [&spec.cert, &spec.key].into_iter().chain(&spec.client_ca) {
        if !path.is_file() {
            return Err(check.invalid(
                span.clone(),
                format!(
                    "`node.http_tls` names {}, which does not exist",
                    path.display()
                ),
                "give the PEM files of the ingress's certificate (its chain) and private key, \
                 e.g. http_tls = { cert = \"edge.pem\", key = \"edge.key\" } (paths relative to \
                 this file)",
            ));
        }
    }
    Ok(spec)
}

fn check_discovery(
    check: &Checker<'_>,
    raw: Option<Spanned<RawDiscovery>>,
    has_quic: bool,
) -> Result<DiscoverySpec, ManifestError> {
    let Some(raw) = raw else {
        return Ok(DiscoverySpec::Embedded);
    };
    let span = raw.span();
    let raw = raw.into_inner();
    if !has_quic {
        return Err(check.invalid(
            span,
            "`[node.discovery]` needs `node.quic`: discovered peers are called over QUIC",
            "add e.g. quic = \"127.0.0.1:7000\" to [node]",
        ));
    }
    let backend = raw.backend.get_ref().clone();
    match backend.as_str() {
        "embedded" => {
            if let Some(endpoint) = raw.endpoints.first() {
                return Err(check.invalid(
                    endpoint.span(),
                    "`endpoints` is for the etcd backend",
                    "remove it, or set backend = \"etcd\"",
                ));
            }
            if let Some(tls) = &raw.tls {
                return Err(check.invalid(
                    tls.span(),
                    "`tls` in [node.discovery] is for the etcd backend (peers use [node.tls])",
                    "remove it, or set backend = \"etcd\"",
                ));
            }
            Ok(DiscoverySpec::Embedded)
        }
        "etcd" => check_etcd(check, raw),
        other => Err(check.invalid(
            raw.backend.span(),
            format!("unknown discovery backend {other:?}"),
            "write backend = \"embedded\" (default, gossip over QUIC) or \"etcd\"",
        )),
    }
}

/// `[node.discovery]` with backend "etcd": endpoints, TLS and key prefix.
fn check_etcd(check: &Checker<'_>, raw: RawDiscovery) -> Result<DiscoverySpec, ManifestError> {
    if raw.endpoints.is_empty() {
        return Err(check.invalid(
            raw.backend.span(),
            "the etcd backend needs at least one endpoint",
            "add e.g. endpoints = [\"http://127.0.0.1:2379\"]",
        ));
    }
    let https = raw.tls.is_some();
    let endpoints = etcd_endpoints(check, &raw.endpoints, https)?;
    let tls = raw.tls.map(|tls| etcd_tls(check, tls)).transpose()?;
    let prefix = etcd_prefix(check, raw.prefix)?;
    Ok(DiscoverySpec::Etcd {
        endpoints,
        prefix,
        tls,
    })
}

/// The etcd endpoints as `HOST:PORT`. Every endpoint speaks the same scheme: https exactly
/// when `tls` says how.
fn etcd_endpoints(
    check: &Checker<'_>,
    raw: &[Spanned<String>],
    https: bool,
) -> Result<Vec<String>, ManifestError> {
    let scheme = if https { "https://" } else { "http://" };
    let mut endpoints = Vec::new();
    for endpoint in raw {
        let value = endpoint.get_ref();
        let authority = value
            .strip_prefix(scheme)
            .filter(|rest| !rest.is_empty() && !rest.contains('/') && rest.contains(':'));
        match authority {
            Some(authority) => endpoints.push(authority.to_owned()),
            None if !https && value.starts_with("https://") => {
                return Err(check.invalid(
                    endpoint.span(),
                    format!("etcd endpoint {value:?} is https, but [node.discovery] has no `tls`"),
                    "add tls = { ca = \"etcd-ca.pem\" } (and cert, key if etcd asks for a \
                     client certificate)",
                ));
            }
            None => {
                return Err(check.invalid(
                    endpoint.span(),
                    format!("etcd endpoint {value:?} is not {scheme}HOST:PORT"),
                    if https {
                        "with `tls` every endpoint is https: write e.g. \"https://10.0.0.9:2379\""
                    } else {
                        "write e.g. \"http://127.0.0.1:2379\""
                    },
                ));
            }
        }
    }
    Ok(endpoints)
}

/// `tls` in `[node.discovery]`: the CA, and a client certificate with its key or neither.
fn etcd_tls(check: &Checker<'_>, tls: Spanned<RawEtcdTls>) -> Result<EtcdTlsSpec, ManifestError> {
    let span = tls.span();
    let tls = tls.into_inner();
    let client = match (tls.cert, tls.key) {
        (Some(cert), Some(key)) => Some((check.resolve(&cert), check.resolve(&key))),
        (None, None) => None,
        _ => {
            return Err(check.invalid(
                span,
                "`tls` names a client certificate or key but not both",
                "give both cert and key (etcd with --client-cert-auth), or neither",
            ));
        }
    };
    Ok(EtcdTlsSpec {
        ca: check.resolve(&tls.ca),
        client,
    })
}

/// The etcd key prefix, `/switchyard` unless given; it must start with `/`.
fn etcd_prefix(
    check: &Checker<'_>,
    prefix: Option<Spanned<String>>,
) -> Result<String, ManifestError> {
    Ok(match prefix {
        None => "/switchyard".to_owned(),
        Some(prefix) => {
            let value = prefix.get_ref().trim_end_matches('/');
            if !value.starts_with('/') {
                return Err(check.invalid(
                    prefix.span(),
                    format!("etcd prefix {:?} does not start with `/`", prefix.get_ref()),
                    "write e.g. \"/switchyard/prod\"; nodes sharing a prefix form one mesh",
                ));
            }
            value.to_owned()
        }
    })
}
