//! The manifest as written (serde + spans), and the checks that turn it into a [`Manifest`].

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

mod messaging;
mod node;
mod services;
mod telemetry;
mod wiring;

use messaging::check_messaging;
use node::check_node;
use services::{check_duplicate_routes, check_service};
use telemetry::check_telemetry;
use wiring::{check_bindings, check_policies, check_queues, check_topics};

use super::{
    BindScope, BindSpec, DiscoverySpec, EtcdTlsSpec, HttpTlsSpec, Location, Manifest,
    ManifestError, MessagingSpec, NatsAuth, NatsSpec, NatsTlsSpec, NodeSpec, OtlpSpec, PolicySpec,
    QueueSpec, Retention, RouteSpec, ServiceSpec, StartAt, SubscriptionSpec, TelemetrySpec,
    TlsSpec, TopicSpec, defaults,
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
    #[serde(default)]
    topic: Vec<RawTopic>,
    messaging: Option<Spanned<RawMessaging>>,
    telemetry: Option<RawTelemetry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    metrics: Option<bool>,
    metrics_addr: Option<Spanned<String>>,
    request_log: Option<Spanned<f64>>,
    #[serde(default)]
    request_log_off: Vec<Spanned<String>>,
    otlp: Option<Spanned<String>>,
    otlp_protocol: Option<Spanned<String>>,
    trace_sampling: Option<Spanned<f64>>,
    resource: Option<Spanned<std::collections::BTreeMap<String, String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMessaging {
    backend: Spanned<String>,
    #[serde(default)]
    servers: Vec<Spanned<String>>,
    credentials: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    tls: Option<Spanned<RawNatsTls>>,
    replicas: Option<Spanned<usize>>,
}

/// `[messaging] tls`: how to reach NATS over TLS.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNatsTls {
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopic {
    name: Spanned<String>,
    retain_ms: Option<Spanned<u64>>,
    retain_mb: Option<Spanned<u64>>,
    #[serde(default)]
    compact: bool,
    max_causation_depth: Option<Spanned<u64>>,
    max_dead_mb: Option<Spanned<u64>>,
    #[serde(default)]
    subscription: Vec<RawSubscription>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubscription {
    service: Spanned<String>,
    /// `"latest"`, `"beginning"`, an offset, or an RFC 3339 time.
    start: Option<Spanned<toml::Value>>,
    concurrency: Option<Spanned<u32>>,
    #[serde(default)]
    ordered_by_key: bool,
    max_attempts: Option<Spanned<u32>>,
    redeliver_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    name: Spanned<String>,
    subscriber: Spanned<String>,
    concurrency: Option<Spanned<u32>>,
    #[serde(default)]
    ordered_by_key: bool,
    max_causation_depth: Option<Spanned<u64>>,
    max_attempts: Option<Spanned<u32>>,
    redeliver_ms: Option<u64>,
    max_depth: Option<Spanned<usize>>,
    max_bytes_mb: Option<Spanned<u64>>,
    max_dead_mb: Option<Spanned<u64>>,
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
    #[serde(default)]
    policies: Vec<Spanned<String>>,
    calls_to: Option<Spanned<String>>,
    outgoing_from: Option<Spanned<String>>,
    queue: Option<Spanned<String>>,
    topic: Option<Spanned<String>>,
    reserve_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Option<Spanned<String>>,
    http: Option<Spanned<String>>,
    admin: Option<Spanned<String>>,
    admin_token_file: Option<String>,
    max_connections: Option<Spanned<u32>>,
    idle_timeout_ms: Option<Spanned<u64>>,
    body_budget_mb: Option<Spanned<u64>>,
    max_header_kb: Option<Spanned<u32>>,
    max_concurrent_streams: Option<Spanned<u32>>,
    stream_window_kb: Option<Spanned<u32>>,
    connection_window_kb: Option<Spanned<u32>>,
    max_pending_resets: Option<Spanned<u32>>,
    keepalive_ms: Option<Spanned<u64>>,
    http_tls: Option<Spanned<RawHttpTls>>,
    max_instances: Option<Spanned<u32>>,
    max_memory_mb: Option<Spanned<u64>>,
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

/// `[node] http_tls`: the ingress's certificate, and the CA its clients' certificates must
/// chain to when it asks for them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpTls {
    cert: String,
    key: String,
    client_ca: Option<String>,
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
    max_pending_calls: Option<Spanned<u32>>,
    max_open_streams: Option<Spanned<u32>>,
    state_max_mb: Option<Spanned<u64>>,
    may_call: Option<Vec<Spanned<String>>>,
    accepts_from: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<Spanned<String>>,
    outbound_ca: Option<Spanned<String>>,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// Route methods; `GRPC` takes gRPC calls of one method (see [`RouteSpec`]).
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "GRPC", "*",
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

    /// The component file `raw` names for `owner` (e.g. "service `hello`"), resolved against
    /// the manifest's directory; an error at its place if there is no such file.
    fn component(&self, raw: &Spanned<String>, owner: &str) -> Result<PathBuf, ManifestError> {
        let component = self.resolve(raw.get_ref());
        if !component.is_file() {
            return Err(self.invalid(
                raw.span(),
                format!(
                    "component file {} of {owner} does not exist",
                    component.display()
                ),
                "paths are relative to the manifest's directory; build a guest project with \
                 `switchyard build <its directory>` (in this repository: `cargo xtask \
                 build-guests`)",
            ));
        }
        Ok(component)
    }
}

pub(super) fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
    let check = Checker { text, path };
    let raw: RawManifest = toml::from_str(text).map_err(|err| ManifestError::Syntax {
        at: check.at(err.span().unwrap_or(0..0)),
        message: err.message().trim_end().to_owned(),
    })?;
    let pool_at = raw
        .node
        .as_ref()
        .and_then(|node| node.max_instances.as_ref().map(Spanned::span))
        .unwrap_or(0..0);
    let node = check_node(&check, raw.node)?;
    let mut services = Vec::with_capacity(raw.service.len());
    let mut names: HashMap<String, Location> = HashMap::new();
    for service in raw.service {
        let spec = check_service(&check, service, &node.pool)?;
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
    let messaging = check_messaging(&check, raw.messaging)?;
    // Through a mesh or through NATS, a service of another node may consume.
    let shared = node.quic.is_some() || matches!(messaging, MessagingSpec::Nats(_));
    let queues = check_queues(&check, raw.queue, &services, shared)?;
    let topics = check_topics(&check, raw.topic, &services, &queues, shared)?;
    let bindings = check_bindings(&check, raw.bind, &policies, &services, &queues, &topics)?;
    let telemetry = check_telemetry(&check, raw.telemetry, &node, &services)?;
    let manifest = Manifest {
        path: path.to_path_buf(),
        node,
        services,
        balance: raw.balance,
        policies,
        bindings,
        queues,
        topics,
        messaging,
        telemetry,
    };
    check_pool(&check, &manifest, pool_at)?;
    Ok(manifest)
}

/// Refuses a pool whose address space the machine cannot reserve.
fn check_pool(
    check: &Checker<'_>,
    manifest: &Manifest,
    at: std::ops::Range<usize>,
) -> Result<(), ManifestError> {
    let plan = super::PoolPlan::of(manifest);
    if plan.reserved_bytes() <= super::pool::MAX_RESERVED_BYTES {
        return Ok(());
    }
    Err(check.invalid(
        at,
        format!(
            "the instance pool would reserve {} GiB of address space ({} slots x {} memories x              {} MiB, the largest memory_limit_mb rounded up to a power of two, plus guard              pages); a node reserves at most {} GiB",
            plan.reserved_bytes() >> 30,
            plan.pool_instances(),
            plan.per_instance.memories,
            plan.slot_bytes >> 20,
            super::pool::MAX_RESERVED_BYTES >> 30
        ),
        "lower [node] max_instances, or the largest memory_limit_mb",
    ))
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
