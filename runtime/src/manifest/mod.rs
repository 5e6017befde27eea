//! The operator's manifest: a TOML file that says what a node runs.
//!
//! ```toml
//! [node]
//! name = "edge-1"
//! http = "127.0.0.1:8080"     # ingress
//! admin = "127.0.0.1:9090"    # the admin API; off loopback only with `tls` (served over it)
//! # admin_token_file = "admin.token"  # its bearer token; default: generated in data_dir
//! max_connections = 4096      # ingress connections at once; more are closed at once
//! idle_timeout_ms = 30000     # a connection silent (or not reading) this long is closed
//! body_budget_mb = 256        # request bodies held at once, all requests; past it: 503
//! max_header_kb = 16          # one request's headers (HTTP/2: its header list); past it: 431
//! max_concurrent_streams = 100  # HTTP/2 streams open at once per connection
//! stream_window_kb = 1024     # HTTP/2 flow-control window per stream
//! connection_window_kb = 1024 # and per connection
//! max_pending_resets = 20     # HTTP/2 streams reset before taken ("rapid reset"); past it: GOAWAY
//! keepalive_ms = 20000        # HTTP/2 ping interval; a ping unanswered as long closes it
//! # http_tls = { cert = "edge.pem", key = "edge.key" }  # HTTPS at the ingress (h2, http/1.1)
//! #   client_ca = "clients-ca.pem" in it: clients must present a certificate it signed
//! max_instances = 1024        # service instances running at once, all services; past it: 503
//! max_memory_mb = 8192        # their memory_limit_mb added up; past it: 503
//! data_dir = ".switchyard"    # compiled-component cache; relative to this file
//! quic = "127.0.0.1:7000"     # for other nodes (optional)
//! # advertise = "10.0.0.5:7000"  # what peers dial, if not `quic` (e.g. quic = "0.0.0.0:7000")
//! seeds = ["127.0.0.1:7001"]  # any peers already up: gossip finds the rest
//! # discovery = { backend = "etcd", endpoints = ["http://127.0.0.1:2379"], prefix = "/switchyard" }
//! #   https: endpoints = ["https://10.0.0.9:2379"], tls = { ca = "etcd-ca.pem", cert = "c.pem", key = "c.key" }
//! tls = { ca = "ca.pem", cert = "edge-1.pem", key = "edge-1.key" }  # omit on loopback
//!
//! [balance.inventory]         # optional, per called service
//! strategy = "peak-ewma"     # or "power-of-two-choices", "round-robin" (default)
//! prefer_local = false        # default true: a local instance always wins
//!
//! [[service]]
//! name = "hello"
//! version = "1.0.0"
//! component = "hello.wasm"    # relative to this file
//! routes = ["GET /hello/{name}"]   # none: a service that only consumes messages
//! # gRPC methods: routes = ["grpc /shop.Orders/Place", "grpc /shop.Orders/Watch"]
//! max_instances = 64          # concurrent requests; more get 503 at once
//! requests_per_instance = 1   # 1: a fresh instance per request; more: reuse idle ones
//! timeout_ms = 5000           # per request; past it: 504
//! memory_limit_mb = 64        # per instance; past it: 500
//! max_pending_calls = 1024    # rpc.start calls one instance holds; past it: unavailable
//! max_open_streams = 256      # streams one instance holds open; past it: unavailable
//! state_max_mb = 64           # keys and values its state keeps; past it: too-large
//! may_call = ["inventory"]    # optional: the only services it may call (default: any)
//! accepts_from = ["shop", "@ingress"]  # optional: the only callers it takes; "@ingress": HTTP
//! allowed_outbound_hosts = ["https://api.example.com"]  # outgoing HTTP outside the mesh
//! outbound_ca = "partner-ca.pem"  # optional: trusted there instead of the system's roots
//! config = { greeting = "Hello" }
//! env = { RUST_BACKTRACE = "1" }
//!
//! [messaging]                 # optional: the embedded broker by default
//! backend = "nats"            # NATS JetStream (see the messaging module's `nats`)
//! servers = ["nats://127.0.0.1:4222"]
//! # credentials = "node.creds", or user = "..." with password_file = "...", or token_file
//! # tls = { ca = "nats-ca.pem", cert = "c.pem", key = "c.key" }
//! replicas = 1                # copies of each stream a JetStream cluster keeps
//!
//! [telemetry]                 # optional
//! metrics = true              # default: GET /metrics on the admin API (with its token)
//! # metrics_addr = "127.0.0.1:9464"  # and here, without the token (for a scraper)
//! request_log = 0.01          # share of requests and calls logged (default 0)
//! request_log_off = ["noisy"] # services never logged
//!
//! [[queue]]                   # a durable queue (see the messaging module)
//! name = "orders"
//! subscriber = "hello"        # the service that consumes it
//! concurrency = 1             # deliveries at once
//! ordered_by_key = false      # true: one key's messages in order, also across failures
//! max_causation_depth = 32    # loop guard: a message at the end of a longer chain of
//!                             # messages (each sent handling the last) is dead-lettered
//! max_attempts = 10           # then the message is dead-lettered
//! redeliver_ms = 100          # first pause without a policy; doubles per attempt
//! max_depth = 10000           # owed messages before `send` answers `full`
//! max_bytes_mb = 1024         # or owed bytes (bodies, keys, headers)
//! max_dead_mb = 256           # dead-letter file size; past it failed messages stay owed
//!
//! [[policy]]
//! name = "retry"
//! component = "policy-retry.wasm"
//! config = { max_attempts = "3" }
//!
//! [[bind]]                    # one of calls_to, outgoing_from or queue
//! policies = ["retry"]
//! calls_to = "hello"
//! ```
//!
//! Parsing is strict ("parse, don't validate"): unknown keys, wrong types, bad addresses,
//! versions and routes, missing component files and duplicate routes are all errors that name
//! `file:line:column`. What comes out ([`Manifest`]) holds only checked values with paths
//! resolved against the manifest's directory.

mod plan;
mod pool;
mod raw;

pub use plan::{Plan, plan};
pub use pool::{InstanceShape, PoolPlan};

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A checked manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The file it was read from.
    pub path: PathBuf,
    /// `[node]`.
    pub node: NodeSpec,
    /// `[[service]]`, in file order.
    pub services: Vec<ServiceSpec>,
    /// `[balance.<service>]`: how calls to a service pick an instance.
    pub balance: BTreeMap<String, BalanceSpec>,
    /// `[[policy]]`: resilience policy components, by name.
    pub policies: Vec<PolicySpec>,
    /// `[[bind]]`: which policies run, in order, around which calls.
    pub bindings: Vec<BindSpec>,
    /// `[[queue]]`: durable queues and the service that consumes each.
    pub queues: Vec<QueueSpec>,
    /// `[[topic]]`: durable topics, what they retain, and the services that subscribe.
    pub topics: Vec<TopicSpec>,
    /// `[messaging]`: which engine keeps the queues and topics.
    pub messaging: MessagingSpec,
    /// `[telemetry]`: metrics and request logs.
    pub telemetry: TelemetrySpec,
}

/// `[telemetry]`: what the node tells about its traffic beyond its log.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySpec {
    /// `metrics = false` turns metrics off: nothing is counted, `GET /metrics` answers 404.
    pub metrics: bool,
    /// `metrics_addr`: a second listener that serves only `GET /metrics`, without the admin
    /// token, for a scraper that should not hold it.
    pub metrics_addr: Option<SocketAddr>,
    /// `request_log`: the share (0 to 1) of requests and calls that get one structured log
    /// line each (target `switchyard::requests`); default 0.
    pub request_log: f64,
    /// `request_log_off`: services whose requests and calls never get one.
    pub request_log_off: Vec<String>,
    /// `otlp` and its companions: where the node exports its spans, if anywhere.
    pub otlp: Option<OtlpSpec>,
}

/// `[telemetry] otlp`: spans exported over OTLP to a collector.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpSpec {
    /// The collector, `http://host:port` (`/v1/traces` is added for HTTP when no path is
    /// given).
    pub endpoint: String,
    /// `otlp_protocol`: `"http/protobuf"` (default) or `"grpc"`.
    pub grpc: bool,
    /// `trace_sampling`: the probability (0 to 1) that a new trace is recorded; a trace a
    /// caller sampled (its `traceparent` says so) always is. Default 1.
    pub sampling: f64,
    /// `[telemetry.resource]`: resource attributes added to the node's own
    /// (`service.name = "switchyard"`, `service.instance.id` = the node's name).
    pub resource: std::collections::BTreeMap<String, String>,
}

impl Default for TelemetrySpec {
    fn default() -> Self {
        Self {
            metrics: true,
            metrics_addr: None,
            request_log: 0.0,
            request_log_off: Vec::new(),
            otlp: None,
        }
    }
}

/// `[messaging]`: the engine behind queues, topics and request/reply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum MessagingSpec {
    /// Logs under `data_dir`, each on the node that declares it (default).
    #[default]
    Embedded,
    /// NATS JetStream: every node that declares a queue or topic uses the same stream.
    Nats(NatsSpec),
}

/// `[messaging] backend = "nats"`: where the servers are and how to reach them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSpec {
    /// `nats://host:port` (or `tls://host:port`) URLs, tried in turn.
    pub servers: Vec<String>,
    pub auth: NatsAuth,
    pub tls: Option<NatsTlsSpec>,
    /// Copies of each stream the servers keep (1 for a single server, 3 for a cluster).
    pub replicas: usize,
}

/// How the node proves who it is to NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsAuth {
    None,
    /// `credentials = "node.creds"`: a JWT and NKey seed, as `nsc` writes them.
    Credentials(PathBuf),
    /// `user = "..."` with `password_file = "..."`.
    UserPassword {
        user: String,
        password_file: PathBuf,
    },
    /// `token_file = "..."`.
    Token(PathBuf),
}

/// `tls` in `[messaging]`: PEM files (paths resolved against the manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsTlsSpec {
    /// The CA that signed the servers' certificates (else the system's roots).
    pub ca: Option<PathBuf>,
    /// This node's client certificate and key, for servers that verify clients.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// One `[[topic]]`: a log every subscribing service reads at its own pace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    /// Which messages it keeps, whoever has read them.
    pub retention: Retention,
    /// The loop guard, as for a queue (`max_causation_depth`).
    pub max_causation_depth: u32,
    /// Bytes the dead-letter file may hold (all subscriptions together).
    pub max_dead_bytes: usize,
    /// `[[topic.subscription]]`, one per subscribing service.
    pub subscriptions: Vec<SubscriptionSpec>,
}

/// What a topic keeps. A message goes when it is older than `max_age` or the topic holds more
/// than `max_bytes` without it (oldest first), whether its subscribers have read it or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    pub max_age: Option<Duration>,
    pub max_bytes: usize,
    /// Keep only the latest message of each key (a table of the latest state per key).
    pub compact: bool,
}

/// One `[[topic.subscription]]`: a service that gets every message of the topic, its
/// instances competing for them (on any node, in a mesh).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSpec {
    pub service: String,
    /// Where a new subscription starts; a subscription that has a cursor keeps it.
    pub start: StartAt,
    pub concurrency: u32,
    pub ordered_by_key: bool,
    pub max_attempts: u32,
    pub redeliver_after: Duration,
}

/// Where a subscription starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// Messages published from now on.
    Latest,
    /// The oldest message the topic still keeps.
    Beginning,
    /// This offset (or the oldest kept, if that is later).
    Offset(u64),
    /// The first message published at or after this time (ms since the Unix epoch).
    Time(u64),
}

impl StartAt {
    /// Reads `latest`, `beginning`, an offset (`42`) or an RFC 3339 time
    /// (`2026-11-26T08:00:00Z`).
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim() {
            "latest" => Some(Self::Latest),
            "beginning" => Some(Self::Beginning),
            text => {
                if let Ok(offset) = text.parse::<u64>() {
                    return Some(Self::Offset(offset));
                }
                let at = time::OffsetDateTime::parse(
                    text,
                    &time::format_description::well_known::Rfc3339,
                )
                .ok()?;
                u64::try_from(at.unix_timestamp_nanos() / 1_000_000)
                    .ok()
                    .map(Self::Time)
            }
        }
    }
}

impl std::fmt::Display for StartAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Latest => f.write_str("latest"),
            Self::Beginning => f.write_str("beginning"),
            Self::Offset(offset) => write!(f, "offset {offset}"),
            Self::Time(ms) => write!(f, "time {ms} ms"),
        }
    }
}

/// One `[[queue]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    /// The service of this node whose `subscriber.on-message` gets the messages.
    pub subscriber: String,
    /// Deliveries at once (1 keeps the order of sending, as long as none fails).
    pub concurrency: u32,
    /// Messages of one key go in the order sent, one at a time, also when a delivery fails:
    /// a failing message holds back the later ones of its key until it is acknowledged or
    /// dead-lettered; other keys (and messages without a key) go on in parallel.
    pub ordered_by_key: bool,
    /// The loop guard: a message that comes at the end of a longer chain of messages (each
    /// sent while handling the one before) is dead-lettered instead of delivered, its chain
    /// named.
    pub max_causation_depth: u32,
    /// Failed deliveries before a message is dead-lettered, whatever the policies say.
    pub max_attempts: u32,
    /// The first pause before a redelivery when no policy decides (doubles per attempt).
    pub redeliver_after: Duration,
    /// Messages owed before a send is refused as `full`.
    pub max_depth: usize,
    /// Bytes of owed messages' bodies (and keys and headers) before a send is refused as
    /// `full`: `max_depth` alone lets a queue of large messages fill the disk.
    pub max_bytes: usize,
    /// Bytes the dead-letter file may hold. Past it a message that fails for good is not
    /// dropped: it stays owed (and counts against `max_depth`) until a redrive makes room.
    pub max_dead_bytes: usize,
}

/// One `[[policy]]`.
#[derive(Debug, Clone)]
pub struct PolicySpec {
    pub name: String,
    /// The `resilience-policy` component (resolved against the manifest's directory).
    pub component: PathBuf,
    pub component_at: Location,
    /// Given to the policy's `configure`.
    pub config: BTreeMap<String, String>,
}

/// One `[[bind]]`: `policies` in order around the calls of `scope`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindSpec {
    pub policies: Vec<String>,
    pub scope: BindScope,
    /// `reserve_ms`: how much of its own remaining time the caller keeps when it makes one of
    /// these calls (instead of the default tenth), so its fallback or error answer runs in
    /// time. Only for calls; a call's own `x-switchyard-reserve-ms` header wins.
    pub reserve: Option<Duration>,
}

/// Which calls a binding wraps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindScope {
    /// Every call to this service, from any caller on this node.
    CallsTo(String),
    /// Every call this service makes.
    OutgoingFrom(String),
    /// Every failed delivery of this queue (`on-delivery-failure`).
    Queue(String),
    /// Every failed delivery of this topic, to any of its subscriptions.
    Topic(String),
}

impl std::fmt::Display for BindScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindScope::CallsTo(service) => write!(f, "calls to `{service}`"),
            BindScope::OutgoingFrom(service) => write!(f, "calls from `{service}`"),
            BindScope::Queue(queue) => write!(f, "deliveries of queue `{queue}`"),
            BindScope::Topic(topic) => write!(f, "deliveries of topic `{topic}`"),
        }
    }
}

/// How calls to one service pick among its instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalanceSpec {
    #[serde(default)]
    pub strategy: Strategy,
    /// Use this node's instance whenever it runs the service (default true).
    #[serde(default = "yes")]
    pub prefer_local: bool,
}

fn yes() -> bool {
    true
}

impl Default for BalanceSpec {
    fn default() -> Self {
        Self {
            strategy: Strategy::default(),
            prefer_local: true,
        }
    }
}

/// A balancing strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Each instance in turn.
    #[default]
    RoundRobin,
    /// Two instances at random; the one with fewer calls in flight.
    PowerOfTwoChoices,
    /// Two instances at random; the lower peak-EWMA latency × (calls in flight + 1).
    PeakEwma,
}

/// `[node]`: how this process presents itself.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Name in logs and the admin API.
    pub name: String,
    /// Ingress listen address (port 0 picks a free port).
    pub http: SocketAddr,
    /// Admin API listen address (port 0 picks a free port). Off loopback only with `tls`:
    /// the admin API is then served over TLS with the node's certificate.
    pub admin: SocketAddr,
    /// The file holding the admin API's bearer token; `None`: `admin.token` in `data_dir`,
    /// generated at the first start.
    pub admin_token_file: Option<PathBuf>,
    /// What the ingress holds for its clients at most.
    pub ingress: IngressLimits,
    /// `[node] http_tls`: the ingress serves HTTPS (HTTP/2 or HTTP/1.1 by ALPN) with it.
    pub http_tls: Option<HttpTlsSpec>,
    /// `[node] max_instances`, `max_memory_mb`: what all services run with together.
    pub pool: PoolBudget,
    /// Where the node keeps its compiled-component cache.
    pub data_dir: PathBuf,
    /// QUIC listen address for other nodes; `None`: this node talks to no peers.
    pub quic: Option<SocketAddr>,
    /// The address peers dial for this node, when it differs from `quic` (which may then be
    /// `0.0.0.0`); port 0 means the port `quic` is bound to.
    pub advertise: Option<SocketAddr>,
    /// QUIC addresses of peers to learn services from.
    pub seeds: Vec<SocketAddr>,
    /// Cluster certificates; `None` on loopback uses the built-in development CA.
    pub tls: Option<TlsSpec>,
    /// `[node.discovery]`: how nodes find each other.
    pub discovery: DiscoverySpec,
}

/// `[node] max_connections`, `idle_timeout_ms`, `body_budget_mb`: the ingress's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngressLimits {
    /// Client connections open at once; past it a new connection is closed at once.
    pub max_connections: u32,
    /// A connection that sends no request (or not all of a request's headers) for this long
    /// is closed; so is one that does not take the response's bytes for this long.
    pub idle_timeout: Duration,
    /// Bytes of request bodies held at once, across requests; past it a request gets `503`.
    pub body_budget_bytes: usize,
    /// Bytes of one request's headers (HTTP/2: its header list).
    pub max_header_bytes: u32,
    /// HTTP/2 streams open at once on one connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 flow-control window per stream.
    pub stream_window_bytes: u32,
    /// HTTP/2 flow-control window per connection.
    pub connection_window_bytes: u32,
    /// HTTP/2 streams a client may reset before the node takes them up; past it the connection
    /// is closed with `ENHANCE_YOUR_CALM` (the "rapid reset" attack).
    pub max_pending_resets: u32,
    /// HTTP/2 keep-alive: ping interval, and how long a ping may go unanswered.
    pub keepalive: Duration,
}

/// `[node] http_tls`: PEM files (paths resolved against the manifest). The files are read at
/// start and again whenever they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTlsSpec {
    /// The ingress's certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// Set: clients must present a certificate this CA signed (mutual TLS at the edge).
    pub client_ca: Option<PathBuf>,
}

/// `[node] max_instances`, `max_memory_mb`: the node's budget of running instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolBudget {
    /// Service instances running at once, all services together.
    pub max_instances: u32,
    /// The memory limits (`memory_limit_mb`) of running instances, added up.
    pub max_memory_bytes: u64,
}

/// `[node.discovery]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DiscoverySpec {
    /// Gossip over the nodes' own QUIC transport, bootstrapped from `seeds` (default).
    #[default]
    Embedded,
    /// Entries under `prefix` in etcd, kept alive by a lease and watched.
    Etcd {
        /// `host:port` of etcd's client endpoints, tried in order.
        endpoints: Vec<String>,
        /// Key prefix; nodes sharing it form one mesh.
        prefix: String,
        /// Set: the endpoints are https, verified with this CA.
        tls: Option<EtcdTlsSpec>,
    },
}

/// `tls` in `[node.discovery]`: PEM files for reaching etcd over https (paths resolved
/// against the manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTlsSpec {
    /// The CA that signed etcd's server certificate.
    pub ca: PathBuf,
    /// This node's client certificate and key, for an etcd started with `--client-cert-auth`.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// `[node.tls]`: PEM files (paths resolved against the manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSpec {
    /// The cluster CA certificate: peers must chain to it.
    pub ca: PathBuf,
    /// This node's certificate.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

/// One `[[service]]`.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub version: semver::Version,
    /// Absolute (or manifest-relative, resolved) path of the component file.
    pub component: PathBuf,
    /// Where `component` was written, for errors found after parsing (e.g. a bad component).
    pub component_at: Location,
    pub routes: Vec<RouteSpec>,
    /// Requests served at once; the next one gets `503` immediately.
    pub max_instances: u32,
    /// Requests one instance serves before it is dropped. `1` gives every request a fresh
    /// instance (full isolation); more reuses idle instances, which is faster but lets a
    /// request see globals an earlier one left behind. An instance that trapped, timed out or
    /// hit its memory limit is never reused.
    pub requests_per_instance: u32,
    /// Per-request deadline.
    pub timeout: Duration,
    /// Linear-memory limit per instance.
    pub memory_limit_bytes: usize,
    /// Calls one instance may have started (`rpc.start`) and not yet dropped; past it a
    /// start answers `unavailable` at once.
    pub max_pending_calls: u32,
    /// Streams one instance may have opened (`quic` connections' `open-stream`) and not yet
    /// dropped; past it an open answers `unavailable` at once.
    pub max_open_streams: u32,
    /// Bytes of keys and values its state may hold, with its messages waiting in the outbox
    /// (`state_max_mb`); a commit past it fails with `too-large`.
    pub state_max_bytes: u64,
    /// The services it may call or open streams to; `None`: any.
    pub may_call: Option<Vec<String>>,
    /// The services whose calls and streams it takes ([`INGRESS_CALLER`] for HTTP clients);
    /// `None`: anyone's.
    pub accepts_from: Option<Vec<String>>,
    /// Where its outgoing HTTP may go outside the mesh, and whom it trusts there.
    pub outbound: OutboundSpec,
    /// Strings handed to the guest through the `config` interface.
    pub config: BTreeMap<String, String>,
    /// Environment variables the guest sees (it sees no others).
    pub env: BTreeMap<String, String>,
}

/// `allowed_outbound_hosts` and `outbound_ca` of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundSpec {
    /// Empty: nothing outside the mesh.
    pub hosts: Vec<OutboundHost>,
    /// PEM file of the CAs its HTTPS requests trust; `None`: the system's roots.
    pub ca: Option<PathBuf>,
}

impl OutboundSpec {
    /// Whether a request to `scheme://host:port` is allowed.
    pub fn allows(&self, https: bool, host: &str, port: u16) -> bool {
        self.hosts
            .iter()
            .any(|allowed| allowed.allows(https, host, port))
    }
}

/// One `allowed_outbound_hosts` entry: `https://api.example.com`, `https://*.example.com:8443`,
/// `http://localhost:*` (Spin's syntax). Without a port, the scheme's own (80, 443).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundHost {
    pub https: bool,
    /// Lower-case; `*` any host, `*.example.com` any name under example.com.
    pub host: String,
    /// `None`: any port.
    pub port: Option<u16>,
}

impl OutboundHost {
    /// Parses an entry; the error says what is wrong with it (the caller adds where).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or("has no scheme (http:// or https://)")?;
        let https = match scheme {
            "https" => true,
            "http" => false,
            other => {
                return Err(format!(
                    "has scheme `{other}`; only http and https are sent"
                ));
            }
        };
        if rest.contains(['/', '?', '#', '@']) {
            return Err("has a path, query or user; name the host and port only".into());
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, "*")) => (host, None),
            Some((host, port)) => {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| format!("has port `{port}`, not a number or `*`"))?;
                (host, Some(port))
            }
            None => (rest, Some(if https { 443 } else { 80 })),
        };
        let name = host.strip_prefix("*.").unwrap_or(host);
        let valid_name = host == "*"
            || !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'));
        if !valid_name {
            return Err(format!(
                "has host `{host}`, not a host name, IPv4 address, `*` or `*.domain`"
            ));
        }
        Ok(Self {
            https,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    pub fn allows(&self, https: bool, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        let host_fits = match self.host.strip_prefix("*.") {
            _ if self.host == "*" => true,
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => host == self.host,
        };
        self.https == https && host_fits && self.port.is_none_or(|allowed| allowed == port)
    }
}

impl fmt::Display for OutboundHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        match self.port {
            Some(port) => write!(f, "{scheme}://{}:{port}", self.host),
            None => write!(f, "{scheme}://{}:*", self.host),
        }
    }
}

/// The `accepts_from` entry that lets HTTP clients in through the ingress (no service is
/// named so: names cannot start with `@`).
pub const INGRESS_CALLER: &str = "@ingress";

/// `"GET /hello/{name}"`, split and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Upper-case method, or `*` for any, or [`GRPC_METHOD`]: the route takes gRPC calls
    /// (`POST` with `application/grpc`, over HTTP/2) of the one method its path names, and
    /// the ingress speaks gRPC for it (deadline from `grpc-timeout`, status in trailers).
    pub method: String,
    /// Path pattern; `{name}` captures one segment, `{*name}` the rest of the path.
    pub pattern: String,
    pub at: Location,
}

/// The method of a `grpc /package.Service/Method` route, upper-cased as methods are.
pub const GRPC_METHOD: &str = "GRPC";

impl fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.pattern)
    }
}

/// A place in a manifest file, 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// The name of a service, policy, queue or node: 1 to 63 lower-case letters, digits and
/// hyphens, starting with a letter and not ending with a hyphen. Names appear in URLs, logs,
/// discovery keys and (for `switchyard new`) crate names, which all take this form. The one
/// rule for the manifest and the scaffold.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName(String);

/// Why a name was refused; the message says the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a valid name: use 1 to 63 lower-case letters, digits and inner hyphens, \
     starting with a letter, e.g. \"inventory-api\""
)]
pub struct InvalidName(pub String);

impl ServiceName {
    pub fn parse(name: &str) -> Result<Self, InvalidName> {
        let valid = (1..=63).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && !name.ends_with('-')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(InvalidName(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a manifest was refused. Each message names the place and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read: check the path and permissions.
    #[error("cannot read manifest {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// The TOML is malformed, a key is unknown or a value has the wrong type.
    #[error("{at}: {message}")]
    Syntax { at: Location, message: String },
    /// A value is well-formed TOML but not acceptable; `hint` says what would be.
    #[error("{at}: {message}\n  hint: {hint}")]
    Invalid {
        at: Location,
        message: String,
        hint: String,
    },
}

/// Defaults, in one place so the docs and the code agree.
pub mod defaults {
    /// `[node] http`.
    pub const HTTP: &str = "127.0.0.1:8080";
    /// `[node] admin`.
    pub const ADMIN: &str = "127.0.0.1:9090";
    /// `[node] data_dir`, relative to the manifest.
    pub const DATA_DIR: &str = ".switchyard";
    /// `[[service]] max_instances`.
    pub const MAX_INSTANCES: u32 = 64;
    /// `[[service]] state_max_mb`: bytes of keys and values one service keeps.
    pub const STATE_MAX_MB: u64 = 64;
    /// `[[service]] max_open_streams`: far above what a normal guest keeps open.
    pub const MAX_OPEN_STREAMS: u32 = 256;
    /// `max_pending_calls` of a service: far above any fan-out a normal guest makes.
    pub const MAX_PENDING_CALLS: u32 = 1024;
    /// `[node] max_connections`.
    pub const MAX_CONNECTIONS: u32 = 4096;
    /// `[node] max_instances`: service instances running at once, node-wide.
    pub const NODE_MAX_INSTANCES: u32 = 1024;
    /// `[node] max_memory_mb`: 8 GiB of memory limits at once (128 default instances).
    pub const NODE_MAX_MEMORY_MB: u64 = 8192;
    /// `[node] idle_timeout_ms`.
    pub const IDLE_TIMEOUT_MS: u64 = 30_000;
    /// `[node] body_budget_mb`.
    pub const BODY_BUDGET_MB: u64 = 256;
    /// `[node] max_header_kb`.
    pub const MAX_HEADER_KB: u32 = 16;
    /// `[node] max_concurrent_streams`: what h2 and most servers allow.
    pub const MAX_CONCURRENT_STREAMS: u32 = 100;
    /// `[node] stream_window_kb`, `connection_window_kb`.
    pub const WINDOW_KB: u32 = 1024;
    /// `[node] max_pending_resets`: h2's own default.
    pub const MAX_PENDING_RESETS: u32 = 20;
    /// `[node] keepalive_ms`.
    pub const KEEPALIVE_MS: u64 = 20_000;
    /// `[[service]] requests_per_instance`: a fresh instance per request.
    pub const REQUESTS_PER_INSTANCE: u32 = 1;
    /// `[[service]] timeout_ms`.
    pub const TIMEOUT_MS: u64 = 30_000;
    /// `[[service]] memory_limit_mb`.
    pub const MEMORY_LIMIT_MB: u64 = 64;
    /// `[[queue]] concurrency`: one delivery at a time, in order.
    pub const QUEUE_CONCURRENCY: u32 = 1;
    /// `[[queue]] max_attempts`.
    pub const QUEUE_MAX_ATTEMPTS: u32 = 10;
    /// `[[queue]] redeliver_ms`.
    pub const QUEUE_REDELIVER_MS: u64 = 100;
    /// `[[queue]] max_bytes_mb`.
    pub const QUEUE_MAX_BYTES_MB: u64 = 1024;
    /// `[[queue]] max_depth`.
    pub const QUEUE_MAX_DEPTH: usize = 10_000;
    /// `[[queue]] max_dead_mb`.
    pub const QUEUE_MAX_DEAD_MB: u64 = 256;
    /// `[[queue]] max_causation_depth`: far past any real chain of handlers, soon enough to
    /// stop a loop.
    pub const QUEUE_MAX_CAUSATION_DEPTH: u64 = 32;
    /// `[[topic]] retain_mb`: what a topic keeps (in memory too) when no time limit is set.
    pub const TOPIC_RETAIN_MB: u64 = 64;
}

impl Manifest {
    /// The first queue or topic subscription that delivers to `service`, as a sentence's
    /// subject (`queue `orders``), if any does.
    pub(crate) fn consumer_of(&self, service: &str) -> Option<String> {
        self.queues
            .iter()
            .find(|queue| queue.subscriber == service)
            .map(|queue| format!("queue `{}`", queue.name))
            .or_else(|| {
                self.topics
                    .iter()
                    .find(|topic| topic.subscriptions.iter().any(|s| s.service == service))
                    .map(|topic| format!("topic `{}`", topic.name))
            })
    }

    /// Reads and checks the manifest at `path`. Component files must exist; whether they are
    /// valid components is checked when the node loads them.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ManifestError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|cause| ManifestError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        Self::parse(&text, path)
    }

    /// Checks manifest `text` as if read from `path` (relative paths resolve against its
    /// directory).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ManifestError> {
        raw::parse(text, path)
    }

    /// Every route of every service, with its service name.
    pub fn routes(&self) -> impl Iterator<Item = (&ServiceSpec, &RouteSpec)> {
        self.services
            .iter()
            .flat_map(|service| service.routes.iter().map(move |route| (service, route)))
    }
}

#[cfg(test)]
mod tests;
