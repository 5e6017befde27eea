//! `[[service]]`: versions, limits and routes (and the routes of all services together).

use std::collections::HashMap;
use std::time::Duration;

use toml::Spanned;

use super::*;

pub(super) fn check_service(
    check: &Checker<'_>,
    raw: RawService,
    budget: &crate::manifest::PoolBudget,
) -> Result<ServiceSpec, ManifestError> {
    check_name(check, &raw.name, "service")?;
    let name = raw.name.get_ref().clone();
    let version = semver::Version::parse(raw.version.get_ref()).map_err(|err| {
        check.invalid(
            raw.version.span(),
            format!(
                "version {:?} of service `{name}` is not semver: {err}",
                raw.version.get_ref()
            ),
            "write MAJOR.MINOR.PATCH, e.g. \"1.2.0\"",
        )
    })?;
    let component_at = check.at(raw.component.span());
    let component = check.component(&raw.component, &format!("service `{name}`"))?;
    // No routes: a service that only consumes messages (or serves streams) takes no requests.
    let routes = raw
        .routes
        .iter()
        .map(|route| check_route(check, route))
        .collect::<Result<Vec<_>, _>>()?;
    let max_instances_at = raw.max_instances.as_ref().map_or(0..0, Spanned::span);
    let memory_limit_at = raw.memory_limit_mb.as_ref().map_or(0..0, Spanned::span);
    let max_instances = bounded(
        check,
        raw.max_instances,
        defaults::MAX_INSTANCES,
        1..=10_000,
        "max_instances",
    )?;
    let requests_per_instance = bounded(
        check,
        raw.requests_per_instance,
        defaults::REQUESTS_PER_INSTANCE,
        1..=1_000_000,
        "requests_per_instance",
    )?;
    let timeout_ms = bounded(
        check,
        raw.timeout_ms,
        defaults::TIMEOUT_MS,
        1..=3_600_000,
        "timeout_ms",
    )?;
    let memory_limit_mb = bounded(
        check,
        raw.memory_limit_mb,
        defaults::MEMORY_LIMIT_MB,
        1..=4096,
        "memory_limit_mb",
    )?;
    if max_instances > budget.max_instances {
        return Err(check.invalid(
            max_instances_at,
            format!(
                "service `{name}`: max_instances = {max_instances} is more than the {} instances \
                 the whole node runs at once ([node] max_instances)",
                budget.max_instances
            ),
            "lower max_instances, or raise [node] max_instances",
        ));
    }
    if mebibytes(memory_limit_mb) as u64 > budget.max_memory_bytes {
        return Err(check.invalid(
            memory_limit_at,
            format!(
                "service `{name}`: memory_limit_mb = {memory_limit_mb} is more than the {} MiB \
                 all running instances of the node may hold together ([node] max_memory_mb): \
                 it could never start an instance",
                budget.max_memory_bytes >> 20
            ),
            "lower memory_limit_mb, or raise [node] max_memory_mb",
        ));
    }
    let max_pending_calls = bounded(
        check,
        raw.max_pending_calls,
        defaults::MAX_PENDING_CALLS,
        1..=100_000,
        "max_pending_calls",
    )?;
    let max_open_streams = bounded(
        check,
        raw.max_open_streams,
        defaults::MAX_OPEN_STREAMS,
        1..=100_000,
        "max_open_streams",
    )?;
    let state_max_mb = bounded(
        check,
        raw.state_max_mb,
        defaults::STATE_MAX_MB,
        1..=1_048_576,
        "state_max_mb",
    )?;
    let may_call = raw
        .may_call
        .map(|names| allow_list(check, &name, "may_call", names, false))
        .transpose()?;
    let accepts_from = raw
        .accepts_from
        .map(|names| allow_list(check, &name, "accepts_from", names, true))
        .transpose()?;
    let outbound = check_outbound(check, &name, raw.allowed_outbound_hosts, raw.outbound_ca)?;
    Ok(ServiceSpec {
        name,
        version,
        component,
        component_at,
        routes,
        max_instances,
        requests_per_instance,
        timeout: Duration::from_millis(timeout_ms),
        memory_limit_bytes: mebibytes(memory_limit_mb),
        max_pending_calls,
        max_open_streams,
        state_max_bytes: state_max_mb * 1024 * 1024,
        may_call,
        accepts_from,
        outbound,
        config: raw.config,
        env: raw.env,
    })
}

/// `allowed_outbound_hosts` and `outbound_ca`: which hosts outside the mesh the service's
/// outgoing HTTP may reach, and whom it trusts there.
fn check_outbound(
    check: &Checker<'_>,
    service: &str,
    hosts: Vec<Spanned<String>>,
    ca: Option<Spanned<String>>,
) -> Result<crate::manifest::OutboundSpec, ManifestError> {
    let hosts = hosts
        .into_iter()
        .map(|host| {
            crate::manifest::OutboundHost::parse(host.get_ref()).map_err(|why| {
                check.invalid(
                    host.span(),
                    format!(
                        "service `{service}`: allowed_outbound_hosts entry {:?} {why}",
                        host.get_ref()
                    ),
                    "write scheme://host[:port]: e.g. \"https://api.example.com\", \
                     \"https://*.example.com:8443\", \"http://localhost:*\"",
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ca = match ca {
        None => None,
        Some(ca) => {
            if hosts.is_empty() {
                return Err(check.invalid(
                    ca.span(),
                    format!("service `{service}` has an outbound_ca but no allowed_outbound_hosts"),
                    "list the hosts it may reach in allowed_outbound_hosts, or remove outbound_ca",
                ));
            }
            let path = check.resolve(ca.get_ref());
            if !path.is_file() {
                return Err(check.invalid(
                    ca.span(),
                    format!(
                        "service `{service}`: outbound_ca file {} does not exist",
                        path.display()
                    ),
                    "name a PEM file of the CA certificates its outgoing HTTPS trusts (relative \
                     to the manifest), or remove the key to trust the system's roots",
                ));
            }
            if let Err(why) = read_ca_certificates(&path) {
                return Err(check.invalid(
                    ca.span(),
                    format!("service `{service}`: outbound_ca {}: {why}", path.display()),
                    "name a PEM file holding one or more CA certificates \
                     (-----BEGIN CERTIFICATE-----)",
                ));
            }
            Some(path)
        }
    };
    Ok(crate::manifest::OutboundSpec { hosts, ca })
}

/// How many certificates the PEM file at `path` holds, or why it cannot be used as CAs.
fn read_ca_certificates(path: &std::path::Path) -> Result<usize, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|err| err.to_string())?;
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|err| format!("not PEM certificates: {err}"))?;
        count += 1;
    }
    if count == 0 {
        return Err("holds no certificate".into());
    }
    Ok(count)
}

/// The service names of an allow-list (`may_call`, `accepts_from`), each checked; the
/// ingress's name is allowed where `ingress` says so. Services elsewhere in the mesh may be
/// named: a list is not checked against this manifest's services.
fn allow_list(
    check: &Checker<'_>,
    service: &str,
    key: &str,
    names: Vec<Spanned<String>>,
    ingress: bool,
) -> Result<Vec<String>, ManifestError> {
    names
        .into_iter()
        .map(|name| {
            let value = name.get_ref();
            if ingress && value == crate::manifest::INGRESS_CALLER {
                return Ok(name.into_inner());
            }
            if crate::manifest::ServiceName::parse(value).is_err() {
                let also = if ingress {
                    format!(
                        ", or \"{}\" for HTTP clients",
                        crate::manifest::INGRESS_CALLER
                    )
                } else {
                    String::new()
                };
                return Err(check.invalid(
                    name.span(),
                    format!("service `{service}`: {key} entry {value:?} is not a service name"),
                    format!("list service names, e.g. [\"inventory\"]{also}"),
                ));
            }
            Ok(name.into_inner())
        })
        .collect()
}

/// A `*_mb` key's value in bytes (saturating: no manifest asks for that much).
pub(super) fn mebibytes(mib: u64) -> usize {
    usize::try_from(mib.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
}

pub(super) fn bounded<T>(
    check: &Checker<'_>,
    value: Option<Spanned<T>>,
    default: T,
    range: std::ops::RangeInclusive<T>,
    key: &str,
) -> Result<T, ManifestError>
where
    T: PartialOrd + Copy + std::fmt::Display,
{
    let Some(value) = value else {
        return Ok(default);
    };
    let inner = *value.get_ref();
    if range.contains(&inner) {
        return Ok(inner);
    }
    Err(check.invalid(
        value.span(),
        format!("`{key}` = {inner} is out of range"),
        format!("use a value from {} to {}", range.start(), range.end()),
    ))
}

fn check_route(check: &Checker<'_>, raw: &Spanned<String>) -> Result<RouteSpec, ManifestError> {
    let text = raw.get_ref().trim();
    let hint = "write \"METHOD /path\", e.g. \"GET /hello/{name}\" or \"* /files/{*rest}\"";
    let Some((method, pattern)) = text.split_once(' ') else {
        return Err(check.invalid(raw.span(), format!("route {text:?} has no method"), hint));
    };
    let method = method.to_ascii_uppercase();
    if !METHODS.contains(&method.as_str()) {
        return Err(check.invalid(
            raw.span(),
            format!("route {text:?}: unknown method `{method}`"),
            format!("use one of {}", METHODS.join(", ")),
        ));
    }
    let pattern = pattern.trim();
    if method == crate::manifest::GRPC_METHOD && !is_grpc_path(pattern) {
        return Err(check.invalid(
            raw.span(),
            format!("route {text:?}: a gRPC route names one method as /package.Service/Method"),
            "write e.g. \"grpc /shop.Orders/Place\" (the path gRPC clients call: the proto \
             package, service and method names, no parameters)",
        ));
    }
    if !pattern.starts_with('/') || pattern.contains(char::is_whitespace) {
        return Err(check.invalid(
            raw.span(),
            format!("route {text:?}: the path must start with `/` and contain no spaces"),
            hint,
        ));
    }
    let segments: Vec<&str> = pattern.split('/').collect();
    for (n, segment) in segments.iter().enumerate() {
        if segment.starts_with("{*") && n + 1 < segments.len() {
            return Err(check.invalid(
                raw.span(),
                format!("route {text:?}: `{segment}` takes the rest of the path, so it must be the last segment"),
                "move it to the end (\"* /files/{*rest}\"), or capture one segment with `{name}`",
            ));
        }
        let opens = segment.matches('{').count();
        let closes = segment.matches('}').count();
        let whole = segment.starts_with('{') && segment.ends_with('}');
        let param = segment.trim_start_matches('{').trim_end_matches('}');
        let param = param.strip_prefix('*').unwrap_or(param);
        let good_param = !param.is_empty()
            && param
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if (opens, closes) != (0, 0) && !((opens, closes) == (1, 1) && whole && good_param) {
            return Err(check.invalid(
                raw.span(),
                format!("route {text:?}: segment `{segment}` is not a valid parameter"),
                "a parameter is a whole segment: `{name}`, or `{*rest}` as the last segment",
            ));
        }
    }
    Ok(RouteSpec {
        method,
        pattern: pattern.to_owned(),
        at: check.at(raw.span()),
    })
}

/// `/package.Service/Method`: two segments of identifier characters and dots, no parameters.
fn is_grpc_path(pattern: &str) -> bool {
    let identifier = |part: &str, dots: bool| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || (dots && c == '.'))
            && !part.starts_with('.')
            && !part.ends_with('.')
    };
    match pattern
        .strip_prefix('/')
        .and_then(|rest| rest.split_once('/'))
    {
        Some((service, method)) => identifier(service, true) && identifier(method, false),
        None => false,
    }
}

/// Two routes collide when they match the same requests: same method (or `*`) and the same
/// pattern once parameter names are ignored.
pub(super) fn check_duplicate_routes(services: &[ServiceSpec]) -> Result<(), ManifestError> {
    let mut seen: HashMap<(String, String), (&str, &RouteSpec)> = HashMap::new();
    for service in services {
        for route in &service.routes {
            let shape = shape_of(&route.pattern);
            let methods: Vec<&str> = if route.method == "*" {
                METHODS.to_vec()
            } else {
                vec![route.method.as_str(), "*"]
            };
            for method in methods {
                if let Some((other_service, other)) = seen.get(&(method.to_owned(), shape.clone()))
                {
                    return Err(ManifestError::Invalid {
                        at: route.at.clone(),
                        message: format!(
                            "route `{route}` of service `{}` collides with route `{other}` of \
                             service `{other_service}`",
                            service.name
                        ),
                        hint: format!(
                            "the other route is at {}; each request must match one route only",
                            other.at
                        ),
                    });
                }
            }
            seen.insert((route.method.clone(), shape), (&service.name, route));
        }
    }
    check_routes_insert(services)
}

/// Inserts every route into a path router per method, as the node's router does when it
/// serves them, so that whatever it would refuse is refused here, with the route's place:
/// `check` and `run` accept the same manifests.
fn check_routes_insert(services: &[ServiceSpec]) -> Result<(), ManifestError> {
    let mut by_method: HashMap<&str, matchit::Router<(&str, &RouteSpec)>> = HashMap::new();
    for service in services {
        for route in &service.routes {
            let router = by_method.entry(route.method.as_str()).or_default();
            if let Err(refused) = router.insert(route.pattern.as_str(), (&service.name, route)) {
                let other = match &refused {
                    matchit::InsertError::Conflict { with } => router.at(with).ok().map(|found| {
                        format!(
                            " (route `{}` of service `{}`, at {})",
                            found.value.1, found.value.0, found.value.1.at
                        )
                    }),
                    _ => None,
                };
                return Err(ManifestError::Invalid {
                    at: route.at.clone(),
                    message: format!(
                        "route `{route}` of service `{}` cannot be served: {refused}{}",
                        service.name,
                        other.unwrap_or_default()
                    ),
                    hint: "make the routes differ in a fixed segment, or merge them into one \
                           service's route"
                        .into(),
                });
            }
        }
    }
    Ok(())
}

fn shape_of(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|segment| match segment {
            s if s.starts_with("{*") => "{*}",
            s if s.starts_with('{') => "{}",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}
