//! The manifest as written (serde + spans), and the checks that turn it into a [`Manifest`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{
    BindScope, BindSpec, DiscoverySpec, EtcdTlsSpec, Location, Manifest, ManifestError, NodeSpec,
    PolicySpec, QueueSpec, RouteSpec, ServiceSpec, TlsSpec, defaults,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    node: Option<RawNode>,
    #[serde(default)]
    service: Vec<RawService>,
    #[serde(default)]
    balance: BTreeMap<String, super::BalanceSpec>,
    #[serde(default)]
    policy: Vec<RawPolicy>,
    #[serde(default)]
    bind: Vec<Spanned<RawBind>>,
    #[serde(default)]
    queue: Vec<RawQueue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    name: Spanned<String>,
    subscriber: Spanned<String>,
    concurrency: Option<Spanned<u32>>,
    max_attempts: Option<Spanned<u32>>,
    redeliver_ms: Option<u64>,
    max_depth: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: Spanned<String>,
    component: Spanned<String>,
    #[serde(default)]
    config: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBind {
    policies: Vec<Spanned<String>>,
    calls_to: Option<Spanned<String>>,
    outgoing_from: Option<Spanned<String>>,
    queue: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Option<Spanned<String>>,
    http: Option<Spanned<String>>,
    admin: Option<Spanned<String>>,
    data_dir: Option<String>,
    quic: Option<Spanned<String>>,
    advertise: Option<Spanned<String>>,
    #[serde(default)]
    seeds: Vec<Spanned<String>>,
    tls: Option<Spanned<RawTls>>,
    discovery: Option<Spanned<RawDiscovery>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDiscovery {
    backend: Spanned<String>,
    #[serde(default)]
    endpoints: Vec<Spanned<String>>,
    prefix: Option<Spanned<String>>,
    tls: Option<Spanned<RawEtcdTls>>,
}

/// `[node.discovery] tls`: how to reach etcd over https.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEtcdTls {
    ca: String,
    cert: Option<String>,
    key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: String,
    cert: String,
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    version: Spanned<String>,
    component: Spanned<String>,
    #[serde(default)]
    routes: Vec<Spanned<String>>,
    max_instances: Option<Spanned<u32>>,
    requests_per_instance: Option<Spanned<u32>>,
    timeout_ms: Option<Spanned<u64>>,
    memory_limit_mb: Option<Spanned<u64>>,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "*",
];

struct Checker<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Checker<'_> {
    fn at(&self, span: Range<usize>) -> Location {
        let offset = span.start.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Location {
            file: self.path.to_path_buf(),
            line,
            column: before[line_start..].chars().count() + 1,
        }
    }

    fn invalid(
        &self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> ManifestError {
        ManifestError::Invalid {
            at: self.at(span),
            message: message.into(),
            hint: hint.into(),
        }
    }

    fn resolve(&self, relative: &str) -> PathBuf {
        let base = self.path.parent().unwrap_or(Path::new("."));
        base.join(relative)
    }
}

pub(super) fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
    let check = Checker { text, path };
    let raw: RawManifest = toml::from_str(text).map_err(|err| ManifestError::Syntax {
        at: check.at(err.span().unwrap_or(0..0)),
        message: err.message().trim_end().to_owned(),
    })?;
    let node = check_node(&check, raw.node)?;
    let mut services = Vec::with_capacity(raw.service.len());
    let mut names: HashMap<String, Location> = HashMap::new();
    for service in raw.service {
        let spec = check_service(&check, service)?;
        if let Some(first) = names.get(&spec.name) {
            return Err(ManifestError::Invalid {
                at: spec.component_at.clone(),
                message: format!("service `{}` is declared twice", spec.name),
                hint: format!(
                    "the first declaration is at {first}; give each [[service]] its own name"
                ),
            });
        }
        names.insert(spec.name.clone(), spec.component_at.clone());
        services.push(spec);
    }
    check_duplicate_routes(&services)?;
    let policies = check_policies(&check, raw.policy)?;
    let queues = check_queues(&check, raw.queue, &services)?;
    let bindings = check_bindings(&check, raw.bind, &policies, &services, &queues)?;
    Ok(Manifest {
        path: path.to_path_buf(),
        node,
        services,
        balance: raw.balance,
        policies,
        bindings,
        queues,
    })
}

fn check_queues(
    check: &Checker<'_>,
    raw: Vec<RawQueue>,
    services: &[ServiceSpec],
) -> Result<Vec<QueueSpec>, ManifestError> {
    let mut queues: Vec<QueueSpec> = Vec::with_capacity(raw.len());
    for queue in raw {
        check_name(check, &queue.name, "queue")?;
        let name = queue.name.get_ref().clone();
        if queues.iter().any(|q| q.name == name) {
            return Err(check.invalid(
                queue.name.span(),
                format!("queue `{name}` is declared twice"),
                "give each [[queue]] its own name",
            ));
        }
        let subscriber = queue.subscriber.get_ref().clone();
        if !services.iter().any(|s| s.name == subscriber) {
            let known: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
            return Err(check.invalid(
                queue.subscriber.span(),
                format!(
                    "queue `{name}`: its subscriber `{subscriber}` is not a service of this node"
                ),
                format!(
                    "a queue is consumed on the node that declares it; name one of this \
                     manifest's services ({})",
                    names_or_none(&known)
                ),
            ));
        }
        let at_least_one = |value: &Option<Spanned<u32>>, key: &str, default: u32| match value {
            Some(value) if *value.get_ref() == 0 => Err(check.invalid(
                value.span(),
                format!("queue `{name}`: `{key}` must be at least 1"),
                format!("leave it out for the default ({default})"),
            )),
            Some(value) => Ok(*value.get_ref()),
            None => Ok(default),
        };
        let concurrency = at_least_one(
            &queue.concurrency,
            "concurrency",
            defaults::QUEUE_CONCURRENCY,
        )?;
        let max_attempts = at_least_one(
            &queue.max_attempts,
            "max_attempts",
            defaults::QUEUE_MAX_ATTEMPTS,
        )?;
        let max_depth = match queue.max_depth {
            Some(depth) if *depth.get_ref() == 0 => {
                return Err(check.invalid(
                    depth.span(),
                    format!("queue `{name}`: `max_depth` must be at least 1"),
                    format!(
                        "leave it out for the default ({})",
                        defaults::QUEUE_MAX_DEPTH
                    ),
                ));
            }
            Some(depth) => depth.into_inner(),
            None => defaults::QUEUE_MAX_DEPTH,
        };
        queues.push(QueueSpec {
            name,
            subscriber,
            concurrency,
            max_attempts,
            redeliver_after: Duration::from_millis(
                queue.redeliver_ms.unwrap_or(defaults::QUEUE_REDELIVER_MS),
            ),
            max_depth,
        });
    }
    Ok(queues)
}

fn check_node(check: &Checker<'_>, raw: Option<RawNode>) -> Result<NodeSpec, ManifestError> {
    let raw = raw.unwrap_or(RawNode {
        name: None,
        http: None,
        admin: None,
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
    let socket = |value: &Spanned<String>, key: &str| {
        value.get_ref().parse::<SocketAddr>().map_err(|err| {
            check.invalid(
                value.span(),
                format!(
                    "`node.{key}` = {:?} is not a socket address: {err}",
                    value.get_ref()
                ),
                "write IP:PORT, e.g. \"127.0.0.1:8080\" or \"0.0.0.0:0\" (0 picks a free port)",
            )
        })
    };
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
    let advertise = match &raw.advertise {
        None => None,
        Some(value) => {
            let advertise = socket(value, "advertise")?;
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
        let span = raw.quic.as_ref().map_or(0..0, Spanned::span);
        return Err(check.invalid(
            span,
            format!("`node.quic` = {quic} is not an address other nodes can reach"),
            "other nodes dial the address a node announces: give a concrete IP, e.g. \
             \"10.0.0.5:7000\" or \"127.0.0.1:7000\", or keep {quic} and add \
             advertise = \"10.0.0.5:7000\" (the address peers dial)",
        ));
    }
    let tls = match raw.tls {
        None => None,
        Some(tls) => {
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
            Some(paths)
        }
    };
    Ok(NodeSpec {
        name,
        http,
        admin,
        data_dir,
        quic,
        advertise,
        seeds,
        tls,
        discovery,
    })
}

fn check_policies(
    check: &Checker<'_>,
    raw: Vec<RawPolicy>,
) -> Result<Vec<PolicySpec>, ManifestError> {
    let mut policies: Vec<PolicySpec> = Vec::with_capacity(raw.len());
    for policy in raw {
        check_name(check, &policy.name, "policy")?;
        let name = policy.name.get_ref().clone();
        if policies.iter().any(|p| p.name == name) {
            return Err(check.invalid(
                policy.name.span(),
                format!("policy `{name}` is declared twice"),
                "give each [[policy]] its own name",
            ));
        }
        let component = check.resolve(policy.component.get_ref());
        if !component.is_file() {
            return Err(check.invalid(
                policy.component.span(),
                format!(
                    "component file {} of policy `{name}` does not exist",
                    component.display()
                ),
                "paths are relative to the manifest's directory; build guests with \
                 `cargo xtask build-guests`",
            ));
        }
        policies.push(PolicySpec {
            name,
            component_at: check.at(policy.component.span()),
            component,
            config: policy.config,
        });
    }
    Ok(policies)
}

fn check_bindings(
    check: &Checker<'_>,
    raw: Vec<Spanned<RawBind>>,
    policies: &[PolicySpec],
    services: &[ServiceSpec],
    queues: &[QueueSpec],
) -> Result<Vec<BindSpec>, ManifestError> {
    let mut bindings = Vec::with_capacity(raw.len());
    for bind in raw {
        let span = bind.span();
        let bind = bind.into_inner();
        if bind.policies.is_empty() {
            return Err(check.invalid(
                span,
                "[[bind]] lists no policies",
                "write e.g. policies = [\"retry\", \"breaker\"] (applied in that order)",
            ));
        }
        for name in &bind.policies {
            if !policies.iter().any(|p| &p.name == name.get_ref()) {
                let known: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
                return Err(check.invalid(
                    name.span(),
                    format!("no [[policy]] is named `{}`", name.get_ref()),
                    format!("declared policies: {}", names_or_none(&known)),
                ));
            }
        }
        let scope = match (bind.calls_to, bind.outgoing_from, bind.queue) {
            (Some(to), None, None) => BindScope::CallsTo(to.into_inner()),
            (None, Some(from), None) => {
                if !services.iter().any(|s| &s.name == from.get_ref()) {
                    return Err(check.invalid(
                        from.span(),
                        format!(
                            "`outgoing_from` names `{}`, which this node does not run",
                            from.get_ref()
                        ),
                        "name a [[service]] of this manifest",
                    ));
                }
                BindScope::OutgoingFrom(from.into_inner())
            }
            (None, None, Some(queue)) => {
                if !queues.iter().any(|q| &q.name == queue.get_ref()) {
                    let known: Vec<&str> = queues.iter().map(|q| q.name.as_str()).collect();
                    return Err(check.invalid(
                        queue.span(),
                        format!(
                            "`queue` names `{}`, which this node does not declare",
                            queue.get_ref()
                        ),
                        format!(
                            "declare it with [[queue]] (declared: {})",
                            names_or_none(&known)
                        ),
                    ));
                }
                BindScope::Queue(queue.into_inner())
            }
            _ => {
                return Err(check.invalid(
                    span,
                    "a [[bind]] needs exactly one of `calls_to`, `outgoing_from` or `queue`",
                    "e.g. calls_to = \"inventory\" (every call to it), outgoing_from = \
                     \"orders\" (every call it makes) or queue = \"jobs\" (its failed deliveries)",
                ));
            }
        };
        bindings.push(BindSpec {
            policies: bind.policies.into_iter().map(Spanned::into_inner).collect(),
            scope,
        });
    }
    Ok(bindings)
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
    match raw.backend.get_ref().as_str() {
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
        "etcd" => {
            if raw.endpoints.is_empty() {
                return Err(check.invalid(
                    raw.backend.span(),
                    "the etcd backend needs at least one endpoint",
                    "add e.g. endpoints = [\"http://127.0.0.1:2379\"]",
                ));
            }
            // Every endpoint speaks the same scheme: https exactly when `tls` says how.
            let https = raw.tls.is_some();
            let scheme = if https { "https://" } else { "http://" };
            let mut endpoints = Vec::new();
            for endpoint in &raw.endpoints {
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
            let tls = match raw.tls {
                None => None,
                Some(tls) => {
                    let span = tls.span();
                    let tls = tls.into_inner();
                    let client = match (tls.cert, tls.key) {
                        (Some(cert), Some(key)) => {
                            Some((check.resolve(&cert), check.resolve(&key)))
                        }
                        (None, None) => None,
                        _ => {
                            return Err(check.invalid(
                                span,
                                "`tls` names a client certificate or key but not both",
                                "give both cert and key (etcd with --client-cert-auth), or neither",
                            ));
                        }
                    };
                    Some(EtcdTlsSpec {
                        ca: check.resolve(&tls.ca),
                        client,
                    })
                }
            };
            let prefix = match raw.prefix {
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
            };
            Ok(DiscoverySpec::Etcd {
                endpoints,
                prefix,
                tls,
            })
        }
        other => Err(check.invalid(
            raw.backend.span(),
            format!("unknown discovery backend {other:?}"),
            "write backend = \"embedded\" (default, gossip over QUIC) or \"etcd\"",
        )),
    }
}

/// `a, b, c`, or `none`, for hints that list what a manifest declares.
fn names_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

fn check_name(
    check: &Checker<'_>,
    name: &Spanned<String>,
    what: &str,
) -> Result<(), ManifestError> {
    let value = name.get_ref();
    match super::ServiceName::parse(value) {
        Ok(_) => Ok(()),
        Err(_) => Err(check.invalid(
            name.span(),
            format!("{what} name {value:?} is not valid"),
            "use 1 to 63 lower-case letters, digits and inner hyphens, starting with a letter, \
             e.g. \"inventory-api\"",
        )),
    }
}

fn check_service(check: &Checker<'_>, raw: RawService) -> Result<ServiceSpec, ManifestError> {
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
    let component = check.resolve(raw.component.get_ref());
    if !component.is_file() {
        return Err(check.invalid(
            raw.component.span(),
            format!(
                "component file {} of service `{name}` does not exist",
                component.display()
            ),
            "paths are relative to the manifest's directory; build guests with \
             `cargo xtask build-guests`",
        ));
    }
    if raw.routes.is_empty() {
        return Err(check.invalid(
            raw.name.span(),
            format!("service `{name}` has no routes"),
            "add e.g. routes = [\"GET /hello/{name}\"]",
        ));
    }
    let routes = raw
        .routes
        .iter()
        .map(|route| check_route(check, route))
        .collect::<Result<Vec<_>, _>>()?;
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
    Ok(ServiceSpec {
        name,
        version,
        component,
        component_at,
        routes,
        max_instances,
        requests_per_instance,
        timeout: Duration::from_millis(timeout_ms),
        memory_limit_bytes: usize::try_from(memory_limit_mb * 1024 * 1024).unwrap_or(usize::MAX),
        config: raw.config,
        env: raw.env,
    })
}

fn bounded<T>(
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
    if !pattern.starts_with('/') || pattern.contains(char::is_whitespace) {
        return Err(check.invalid(
            raw.span(),
            format!("route {text:?}: the path must start with `/` and contain no spaces"),
            hint,
        ));
    }
    for segment in pattern.split('/') {
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

/// Two routes collide when they match the same requests: same method (or `*`) and the same
/// pattern once parameter names are ignored.
fn check_duplicate_routes(services: &[ServiceSpec]) -> Result<(), ManifestError> {
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
