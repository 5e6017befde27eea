//! The steps of [`super::Node::start`], each a function with what it needs and what it
//! makes, so the start reads as their sequence.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::services::Services;
use super::{
    Control, Membership, Mesh, NodeError, PeerFrames, SHUTDOWN_GRACE, Subscribers, load_all,
};
use crate::discovery;
use crate::host::Outbound;
use crate::http::{self, Admin, AdminToken, ConnectionLimits, Ingress, MetricsPage};
use crate::manifest::{DiscoverySpec, Manifest, MessagingSpec};
use crate::messaging;
use crate::policy::Policies;
use crate::rpc;
use crate::state;
use crate::telemetry::{Metrics, RequestLog, Traces};
use crate::transport::Identity;

/// The node's TCP listeners, bound before anything slow happens.
pub(super) struct Listeners {
    http: TcpListener,
    admin: TcpListener,
    /// `[telemetry] metrics_addr`, when set.
    metrics: Option<TcpListener>,
    /// `[node] http_tls`: the ingress's connections are TLS first.
    pub(super) http_tls: Option<Arc<crate::http::ServerTls>>,
    /// Where they listen (the real ports when the manifest said 0).
    pub(super) http_addr: SocketAddr,
    pub(super) admin_addr: SocketAddr,
    pub(super) metrics_addr: Option<SocketAddr>,
}

impl Listeners {
    pub(super) async fn bind(manifest: &Manifest) -> Result<Self, NodeError> {
        let failed = |key: &'static str, addr: SocketAddr| {
            move |cause| NodeError::Bind {
                key,
                addr,
                manifest: manifest.path.clone(),
                cause,
            }
        };
        let (http_at, admin_at) = (manifest.node.http, manifest.node.admin);
        let http = TcpListener::bind(http_at)
            .await
            .map_err(failed("node.http", http_at))?;
        let admin = TcpListener::bind(admin_at)
            .await
            .map_err(failed("node.admin", admin_at))?;
        let (metrics, metrics_addr) = match manifest.telemetry.metrics_addr {
            Some(at) => {
                let failed = failed("telemetry.metrics_addr", at);
                let listener = TcpListener::bind(at).await.map_err(&failed)?;
                let addr = listener.local_addr().map_err(failed)?;
                (Some(listener), Some(addr))
            }
            None => (None, None),
        };
        Ok(Self {
            http_addr: http.local_addr().map_err(failed("node.http", http_at))?,
            admin_addr: admin.local_addr().map_err(failed("node.admin", admin_at))?,
            metrics_addr,
            http,
            admin,
            metrics,
            http_tls: None,
        })
    }
}

/// The admin API serves a few operators and scripts, not the public.
const ADMIN_CONNECTIONS: ConnectionLimits =
    ConnectionLimits::with(64, std::time::Duration::from_secs(30));

/// Who may use the admin API, and over what.
pub(super) struct AdminAccess {
    pub(super) token: AdminToken,
    /// Set when the admin API listens off loopback (the manifest check allows that only
    /// with `[node.tls]`): it is served over TLS with the node's certificate.
    tls: Option<Arc<crate::http::ServerTls>>,
    /// The certificate the TLS acceptor presents, to reload it.
    node_cert: Option<Arc<crate::transport::NodeCert>>,
}

impl AdminAccess {
    pub(super) fn new(manifest: &Manifest) -> Result<Self, NodeError> {
        let node = &manifest.node;
        let token = AdminToken::open(node.admin_token_file.as_deref(), &node.data_dir)?;
        let (tls, node_cert) = match &node.tls {
            Some(files) if !node.admin.ip().is_loopback() => {
                let identity = Identity::from_files(&files.ca, &files.cert, &files.key)?;
                let config = identity.https_server()?;
                (
                    Some(crate::http::ServerTls::new(config)),
                    Some(identity.node_cert()),
                )
            }
            _ => (None, None),
        };
        Ok(Self {
            token,
            tls,
            node_cert,
        })
    }

    /// The certificate the admin API presents, if it is served over TLS.
    pub(super) fn node_cert(&self) -> Option<Arc<crate::transport::NodeCert>> {
        self.node_cert.clone()
    }
}

/// Everything that runs guests, built from the manifest.
pub(super) struct Runtime {
    broker: Arc<messaging::Broker>,
    state: Arc<state::Store>,
    relay: Arc<state::RelayStats>,
    policies: Arc<Policies>,
    rpc: rpc::Client,
    services: Arc<Services>,
    pub(super) control: Arc<Control>,
    metrics: Metrics,
    request_log: RequestLog,
    pub(super) traces: Traces,
}

impl Runtime {
    /// Compiles every component (off the executor), opens the queues, starts the policies,
    /// and builds the services with the rpc client that calls between them.
    pub(super) async fn build(manifest: &Manifest, mesh: Option<&Mesh>) -> Result<Self, NodeError> {
        let (engine, components) = {
            let manifest = manifest.clone();
            tokio::task::spawn_blocking(move || load_all(&manifest))
                .await
                .map_err(|err| NodeError::Interrupted(err.to_string()))??
        };
        let engine = Arc::new(engine);
        let metrics = if manifest.telemetry.metrics {
            Metrics::new()
        } else {
            Metrics::off()
        };
        let request_log = RequestLog::new(
            manifest.telemetry.request_log,
            manifest.telemetry.request_log_off.iter().cloned(),
        );
        let traces = match &manifest.telemetry.otlp {
            None => Traces::off(),
            Some(otlp) => Traces::export(&otlp_export(otlp, &manifest.node.name))
                .map_err(|err| NodeError::Telemetry(err.to_string()))?,
        };
        let broker = match &manifest.messaging {
            MessagingSpec::Embedded => {
                let (data_dir, queues) = (manifest.node.data_dir.clone(), manifest.queues.clone());
                let (node, topics) = (manifest.node.name.clone(), manifest.topics.clone());
                tokio::task::spawn_blocking(move || {
                    messaging::Broker::open(&data_dir, &node, &queues, &topics)
                })
                .await
                .map_err(|err| NodeError::Interrupted(err.to_string()))??
            }
            MessagingSpec::Nats(nats) => {
                messaging::Broker::connect_nats(
                    nats,
                    &manifest.node.data_dir,
                    &manifest.node.name,
                    &manifest.queues,
                    &manifest.topics,
                )
                .await?
            }
        };
        let broker = Arc::new(broker);
        let state = {
            let path = manifest.node.data_dir.join("state.redb");
            tokio::task::spawn_blocking(move || state::Store::open(&path))
                .await
                .map_err(|err| NodeError::Interrupted(err.to_string()))?
                .map_err(|err| NodeError::State(err.to_string()))?
        };
        let state = Arc::new(state);
        let relay = Arc::new(state::RelayStats::default());
        for queue in &manifest.queues {
            if !manifest.services.iter().any(|s| s.name == queue.subscriber) {
                tracing::info!(queue = %queue.name, subscriber = %queue.subscriber, "the queue's subscriber does not run on this node; its messages go to a node of the mesh that runs it");
            }
        }
        let policies =
            Arc::new(Policies::start(&engine, manifest, metrics.clone(), traces.clone()).await?);
        let remote = mesh.map(|mesh| {
            Arc::new(rpc::Remote::new(
                mesh.transport.clone(),
                mesh.registry.clone(),
            ))
        });
        let rpc = rpc::Client::new(
            remote,
            manifest.balance.clone(),
            policies.clone(),
            metrics.clone(),
            request_log.clone(),
            traces.clone(),
        );
        if let Some(mesh) = mesh {
            broker.join_mesh(Arc::new(messaging::MeshQueues::new(
                mesh.transport.clone(),
                mesh.registry.clone(),
            )));
        }
        let outbound = Outbound {
            calls: Arc::new(rpc.clone()),
            queues: broker.clone(),
            state: Arc::new(state::SharedStore::new(&state)),
            traces: traces.clone(),
        };
        let services = Arc::new(
            Services::start(
                engine.clone(),
                outbound,
                &manifest.node.name,
                &manifest.services,
                components,
            )
            .map_err(|err| NodeError::Route(err.to_string()))?,
        );
        rpc.install(services.directory());
        let control = Arc::new(Control {
            engine: engine.clone(),
            rpc: rpc.clone(),
            policies: policies.clone(),
            services: services.clone(),
            broker: broker.clone(),
            state: state.clone(),
            relay: relay.clone(),
            membership: std::sync::OnceLock::new(),
            admin_swaps: std::sync::Mutex::default(),
        });
        Ok(Self {
            broker,
            state,
            relay,
            policies,
            rpc,
            services,
            control,
            metrics,
            request_log,
            traces,
        })
    }

    /// Hands queued messages to this node's services, or to peers' when they do not run here.
    fn subscribers(&self) -> Subscribers {
        Subscribers {
            services: Arc::downgrade(&self.services),
            mesh: self.broker.mesh().cloned(),
            traces: self.traces.clone(),
            request_log: self.request_log.clone(),
        }
    }

    /// Serves queue delivery, the ingress and the admin API until `shutdown` flips.
    pub(super) fn serve(
        &self,
        manifest: &Manifest,
        listeners: Listeners,
        admin: AdminAccess,
        mesh: Option<&Mesh>,
        servers: &mut JoinSet<()>,
        shutdown: watch::Receiver<bool>,
    ) {
        servers.spawn(self.broker.clone().run(
            Arc::new(self.subscribers()),
            self.policies.clone(),
            shutdown.clone(),
        ));
        servers.spawn(state::run_relay(
            self.state.clone(),
            self.broker.clone(),
            self.relay.clone(),
            shutdown.clone(),
        ));
        let ingress = manifest.node.ingress;
        servers.spawn(http::serve(
            listeners.http,
            Arc::new(Ingress::new(
                self.services.directory().clone(),
                ingress.body_budget_bytes,
                self.metrics.clone(),
                self.request_log.clone(),
                self.traces.clone(),
            )),
            listeners.http_tls,
            ConnectionLimits {
                max_connections: usize::try_from(ingress.max_connections).unwrap_or(usize::MAX),
                idle_timeout: ingress.idle_timeout,
                max_header_bytes: ingress.max_header_bytes,
                max_concurrent_streams: ingress.max_concurrent_streams,
                stream_window: ingress.stream_window_bytes,
                connection_window: ingress.connection_window_bytes,
                max_pending_resets: ingress.max_pending_resets,
                keepalive: ingress.keepalive,
            },
            shutdown.clone(),
            SHUTDOWN_GRACE,
        ));
        let metrics_page = Arc::new(MetricsPage::new(
            self.metrics.clone(),
            self.services.directory().clone(),
            mesh.map(|mesh| mesh.registry.clone()),
            mesh.map(|mesh| mesh.transport.clone()),
            self.control.clone(),
        ));
        if let Some(listener) = listeners.metrics {
            servers.spawn(http::serve(
                listener,
                metrics_page.clone(),
                None,
                ADMIN_CONNECTIONS,
                shutdown.clone(),
                SHUTDOWN_GRACE,
            ));
        }
        servers.spawn(http::serve(
            listeners.admin,
            Arc::new(Admin::new(
                manifest.node.name.clone(),
                self.services.directory().clone(),
                mesh.map(|mesh| mesh.registry.clone()),
                self.control.clone(),
                admin.token,
                metrics_page,
                mesh.map(|mesh| mesh.transport.clone()),
            )),
            admin.tls,
            ADMIN_CONNECTIONS,
            shutdown,
            SHUTDOWN_GRACE,
        ));
    }
}

/// The exporter's settings from the manifest's: the node named in the resource unless the
/// operator names it otherwise.
fn otlp_export(otlp: &crate::manifest::OtlpSpec, node: &str) -> crate::telemetry::OtlpExport {
    let mut resource = std::collections::BTreeMap::from([
        ("service.name".to_owned(), "switchyard".to_owned()),
        ("service.instance.id".to_owned(), node.to_owned()),
        ("switchyard.node".to_owned(), node.to_owned()),
    ]);
    resource.extend(otlp.resource.clone());
    crate::telemetry::OtlpExport {
        endpoint: otlp.endpoint.clone(),
        protocol: if otlp.grpc {
            crate::telemetry::OtlpProtocol::Grpc
        } else {
            crate::telemetry::OtlpProtocol::HttpProtobuf
        },
        sampling: otlp.sampling,
        resource: resource.into_iter().collect(),
    }
}

/// Serves peers' frames on the transport and starts discovery; returns the bound QUIC address
/// and the running membership.
pub(super) fn join_mesh(
    manifest: &Manifest,
    mesh: &Mesh,
    runtime: &Runtime,
    servers: &mut JoinSet<()>,
    shutdown: &watch::Receiver<bool>,
) -> Result<(SocketAddr, Membership), NodeError> {
    let bound = mesh.transport.local_addr()?;
    // What peers dial: the advertised address (port 0 there: the bound port).
    let address = match manifest.node.advertise {
        Some(advertise) if advertise.port() == 0 => SocketAddr::new(advertise.ip(), bound.port()),
        Some(advertise) => advertise,
        None => bound,
    };
    let me = discovery::Member {
        node: manifest.node.name.clone(),
        address,
        incarnation: discovery::new_incarnation(),
        beat: 0,
        proof: Default::default(),
        queues: manifest
            .queues
            .iter()
            .map(|queue| queue.name.clone())
            .chain(manifest.topics.iter().map(|topic| topic.name.clone()))
            .collect(),
        services: manifest
            .services
            .iter()
            .map(|spec| (spec.name.clone(), spec.version.to_string()))
            .collect(),
        ttl_ms: 0,
    };
    let (gossip, backend) = discovery_backend(manifest, mesh, me)?;
    let handler = PeerFrames {
        rpc: rpc::PeerHandler {
            client: runtime.rpc.clone(),
        },
        gossip,
        broker: runtime.broker.clone(),
        subscribers: runtime.subscribers(),
        metrics: runtime.metrics.clone(),
    };
    servers.spawn(
        mesh.transport
            .clone()
            .serve(Arc::new(handler), shutdown.clone()),
    );
    let (stop, stopped) = watch::channel(false);
    tracing::info!(backend = backend.backend(), advertised = %address, "discovery started");
    let running = tokio::spawn(backend.clone().run(stopped));
    let _ = runtime.control.membership.set(backend.clone());
    Ok((
        bound,
        Membership {
            backend,
            stop,
            running,
            transport: mesh.transport.clone(),
        },
    ))
}

/// A discovery backend, and the gossip that answers peers' frames when it is the embedded one.
type Discovery = (
    Option<Arc<discovery::Gossip>>,
    Arc<dyn discovery::Membership>,
);

/// The manifest's discovery backend for `me`.
fn discovery_backend(
    manifest: &Manifest,
    mesh: &Mesh,
    me: discovery::Member,
) -> Result<Discovery, NodeError> {
    Ok(match &manifest.node.discovery {
        DiscoverySpec::Embedded => {
            let gossip = Arc::new(discovery::Gossip::new(
                mesh.registry.clone(),
                mesh.transport.clone(),
                mesh.node_cert.clone(),
                me,
                manifest.node.seeds.clone(),
            )?);
            (Some(gossip.clone()), gossip)
        }
        DiscoverySpec::Etcd {
            endpoints,
            prefix,
            tls,
        } => {
            let tls = tls
                .as_ref()
                .map(discovery::etcd_connector)
                .transpose()
                .map_err(|err| NodeError::EtcdTls(err.to_string()))?;
            (
                None,
                Arc::new(discovery::Etcd::new(
                    mesh.registry.clone(),
                    endpoints.clone(),
                    prefix.clone(),
                    tls,
                    mesh.node_cert.clone(),
                    me,
                )?),
            )
        }
    })
}
