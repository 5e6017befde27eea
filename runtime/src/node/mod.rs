//! A node's lifecycle: from a checked [`Manifest`] to listening sockets, and back down.
//!
//! [`Node::start`] binds both listeners first (so a taken address fails in milliseconds, before
//! any compilation), then loads every component off the async executor, builds the router, and
//! serves. [`Node::shutdown`] stops accepting and lets in-flight requests finish.

mod certificates;
mod control;
mod reload;
mod services;
mod start;

pub use reload::ReloadReport;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::discovery;
use crate::manifest::{Location, Manifest};
use crate::messaging;
use crate::rpc;
use crate::transport::{FrameHandler, Identity, Peer, RawStream, Transport};
use crate::wasm::{Engine, EngineConfig, LoadError, LoadedComponent};
use crate::wire::frame::{FailureKind, Frame};

use control::Control;
use services::Services;
use services::slot_config;

/// How long in-flight requests may take to finish once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long closing QUIC connections may wait for peers to hear of it.
const QUIC_CLOSE_GRACE: Duration = Duration::from_millis(200);

/// Why a node did not start. Each message names the manifest place or address to fix.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The wasm engine could not be built.
    #[error(transparent)]
    Engine(#[from] crate::wasm::EngineError),
    /// A service's component could not be loaded.
    #[error("{at}: service `{service}`: {cause}")]
    Load {
        service: String,
        at: Location,
        cause: LoadError,
    },
    /// A listen address is taken or not allowed.
    #[error(
        "cannot listen on {addr} (`{key}` in {}): {cause}\n  hint: another process \
         holds the port, or pick another one (port 0 picks a free one)", manifest.display()
    )]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        manifest: std::path::PathBuf,
        cause: std::io::Error,
    },
    /// Two routes conflict in a way the manifest check could not see.
    #[error("{0}")]
    Route(String),
    /// A policy did not load or refused its configuration.
    #[error("{0}\n  hint: check [[policy]] and [[bind]] in the manifest")]
    Policy(#[from] crate::policy::PolicyError),
    /// The ingress's certificate, key or client CA (`[node] http_tls`) is not usable.
    #[error("{0}\n  hint: check `http_tls` in [node]")]
    EdgeTls(#[from] crate::http::EdgeTlsError),
    /// The QUIC transport could not start (address, certificates).
    #[error("{0}\n  hint: check `node.quic` and `[node.tls]` in the manifest")]
    Transport(#[from] crate::transport::TransportError),
    /// The node certificate names another node than the manifest.
    #[error(
        "the node certificate in [node.tls] is for node `{certificate}`, but this manifest's \
         node is `{node}`: a node is its certificate\n  hint: issue one for this node with \
         `switchyard cert node {node}`, or set `node.name = \"{certificate}\"`"
    )]
    NotThisNode { certificate: String, node: String },
    /// A non-loopback node without certificates.
    #[error(
        "`node.quic` or a seed is not on loopback, so the built-in development CA cannot be \
         used\n  hint: create a CA and node certificates with `switchyard cert ca` and \
         `switchyard cert node <name>`, and set [node.tls] ca, cert and key"
    )]
    NeedsTls,
    /// The files for reaching etcd over https are missing or unusable.
    #[error("{0}\n  hint: check `tls` in [node.discovery] (PEM files: ca, and cert with key)")]
    EtcdTls(String),
    /// The manifest file cannot be watched.
    #[error("cannot watch the manifest for changes: {0}")]
    Watch(String),
    /// A queue's files could not be opened, or its NATS streams made ready.
    #[error(transparent)]
    Messaging(#[from] crate::messaging::MessagingError),
    /// The admin API's token file is missing, short or cannot be created.
    #[error(transparent)]
    AdminToken(#[from] crate::http::TokenError),
    /// The state store under `data_dir` cannot be opened.
    #[error("{0}")]
    State(String),
    /// `[telemetry] otlp`'s exporter could not be built.
    #[error("{0}")]
    Telemetry(String),
    /// A blocking load task panicked or was cancelled.
    #[error("loading components was interrupted: {0}")]
    Interrupted(String),
}

/// A running node.
pub struct Node {
    name: String,
    http_addr: SocketAddr,
    admin_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    admin_token_file: std::path::PathBuf,
    quic_addr: Option<SocketAddr>,
    membership: Option<Membership>,
    /// The manifest it started from and what swaps go through, for [`Node::watch_manifest`].
    manifest: Manifest,
    control: Arc<Control>,
    /// Flushed last at shutdown.
    traces: crate::telemetry::Traces,
    shutdown: watch::Sender<bool>,
    servers: JoinSet<()>,
}

impl Node {
    /// Starts serving `manifest`. Returns once both listeners accept connections.
    ///
    /// The steps, in order (see `start.rs`): bind the listeners (a taken address fails in
    /// milliseconds, before any compilation), start the QUIC transport, build the runtime
    /// (engine and components, queues, policies, the rpc client, the services), start the
    /// mesh (peer frames and discovery), then serve HTTP, the admin API and queue delivery.
    pub async fn start(manifest: &Manifest) -> Result<Self, NodeError> {
        let mut listeners = start::Listeners::bind(manifest).await?;
        let admin = start::AdminAccess::new(manifest)?;
        let edge = manifest
            .node
            .http_tls
            .as_ref()
            .map(crate::http::edge_tls)
            .transpose()?;
        let admin_token_file = admin.token.path().to_owned();
        let mesh = manifest
            .node
            .quic
            .map(|addr| start_transport(manifest, addr))
            .transpose()?;
        let runtime = start::Runtime::build(manifest, mesh.as_ref()).await?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut servers = JoinSet::new();
        let mut quic_addr = None;
        let mut membership = None;
        if let Some(mesh) = &mesh {
            let (bound, joined) =
                start::join_mesh(manifest, mesh, &runtime, &mut servers, &shutdown_rx)?;
            quic_addr = Some(bound);
            membership = Some(joined);
        }
        if let Some(tls) = &manifest.node.tls {
            let presenters: Vec<Arc<dyn certificates::Presenter>> = mesh
                .as_ref()
                .map(|mesh| mesh.node_cert.clone())
                .into_iter()
                .chain(admin.node_cert())
                .map(|cert| cert as Arc<dyn certificates::Presenter>)
                .collect();
            if !presenters.is_empty() {
                servers.spawn(certificates::watch(
                    certificates::Files::Node,
                    presenters,
                    tls.cert.clone(),
                    tls.key.clone(),
                    shutdown_rx.clone(),
                ));
            }
        }
        if let (Some(tls), Some(edge)) = (&manifest.node.http_tls, &edge) {
            servers.spawn(certificates::watch(
                certificates::Files::Ingress,
                vec![edge.clone() as Arc<dyn certificates::Presenter>],
                tls.cert.clone(),
                tls.key.clone(),
                shutdown_rx.clone(),
            ));
        }
        let (http_addr, admin_addr) = (listeners.http_addr, listeners.admin_addr);
        let metrics_addr = listeners.metrics_addr;
        listeners.http_tls = edge.map(|edge| edge.accepting());
        runtime.serve(
            manifest,
            listeners,
            admin,
            mesh.as_ref(),
            &mut servers,
            shutdown_rx,
        );
        tracing::info!(
            node = %manifest.node.name,
            http = %http_addr,
            admin = %admin_addr,
            metrics = ?metrics_addr,
            admin_token = %admin_token_file.display(),
            quic = ?quic_addr,
            services = manifest.services.len(),
            "node ready"
        );
        Ok(Self {
            name: manifest.node.name.clone(),
            http_addr,
            admin_addr,
            metrics_addr,
            admin_token_file,
            quic_addr,
            membership,
            manifest: manifest.clone(),
            control: runtime.control,
            traces: runtime.traces,
            shutdown,
            servers,
        })
    }

    /// Where the ingress listens (the real port when the manifest said 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where the admin API listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Where `GET /metrics` is served without the admin token (`[telemetry] metrics_addr`).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The file holding the admin API's bearer token (see `[node] admin_token_file`).
    pub fn admin_token_file(&self) -> &Path {
        &self.admin_token_file
    }

    /// Watches the manifest file and applies edits while the node runs: a changed
    /// `component` of a service or policy is hot-swapped; service settings, policy config,
    /// bindings, routes and added or removed services are applied; what needs a restart is
    /// logged (see the `reload` module). Each reload's report is also sent to `reports`, if
    /// given.
    pub fn watch_manifest(
        &mut self,
        reports: Option<tokio::sync::mpsc::UnboundedSender<ReloadReport>>,
    ) -> Result<(), NodeError> {
        let task = reload::spawn(
            self.manifest.clone(),
            self.control.clone(),
            self.shutdown.subscribe(),
            reports,
        )
        .map_err(|err| NodeError::Watch(err.to_string()))?;
        self.servers.spawn(async move {
            let _ = task.await;
        });
        Ok(())
    }

    /// Where other nodes reach this one, if it has a QUIC transport.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic_addr
    }

    /// Its broker, for the benchmarks' probes.
    #[cfg(feature = "bench")]
    pub(crate) fn broker(&self) -> Arc<messaging::Broker> {
        self.control.broker.clone()
    }

    /// Stops accepting connections and waits (up to a grace period) for in-flight requests.
    ///
    /// Peers are told first (a goodbye, or the etcd lease revoked) so they stop sending new
    /// calls here while in-flight ones finish; the QUIC endpoint closes last.
    pub async fn shutdown(mut self) {
        tracing::info!(node = %self.name, "shutting down");
        if let Some(membership) = &self.membership {
            let _ = membership.stop.send(true);
        }
        if let Some(mut membership) = self.membership.take() {
            let _ = (&mut membership.running).await;
            membership.backend.leave().await;
            let _ = self.shutdown.send(true);
            while self.servers.join_next().await.is_some() {}
            membership.transport.close(QUIC_CLOSE_GRACE).await;
        } else {
            let _ = self.shutdown.send(true);
            while self.servers.join_next().await.is_some() {}
        }
        let traces = self.traces.clone();
        if traces.is_on() {
            let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
        }
        tracing::info!(node = %self.name, "stopped");
    }
}

impl Drop for Node {
    /// A node dropped without [`Node::shutdown`] goes silent like a crashed one: no goodbye,
    /// peers forget it when its registration runs out.
    fn drop(&mut self) {
        if let Some(membership) = &self.membership {
            membership.running.abort();
        }
    }
}

/// Hands queued messages to the services' slots, here or, for a service that does not run
/// here (or is busy here), on a peer that runs it. Holds the services weakly: the node owns
/// them, and a delivery after they are gone waits like one to a busy service.
#[derive(Clone)]
struct Subscribers {
    services: std::sync::Weak<Services>,
    /// Peers' subscribers, when this node is part of a mesh.
    mesh: Option<Arc<messaging::MeshQueues>>,
    /// Records a consumer span per delivery here.
    traces: crate::telemetry::Traces,
    /// Logs a share of them.
    request_log: crate::telemetry::RequestLog,
}

impl Subscribers {
    /// Delivers to `service` on this node; `None` if it does not run here.
    async fn deliver_here(
        &self,
        service: &str,
        queue: &str,
        message: &messaging::StoredMessage,
        attempt: u32,
    ) -> Option<messaging::Delivered> {
        use messaging::Delivered;
        let Some(services) = self.services.upgrade() else {
            return Some(Delivered::NotNow("the node is stopping".into()));
        };
        let slot = services.slot(service).ok()?;
        drop(services);
        let parent = message
            .trace_context
            .as_deref()
            .and_then(crate::telemetry::TraceContext::parse);
        let span = self.traces.start(
            || format!("deliver {queue}").into(),
            crate::telemetry::SpanKind::Consumer,
            parent.as_ref(),
            || {
                use crate::telemetry::KeyValue;
                vec![
                    KeyValue::new("messaging.operation.name", "deliver"),
                    KeyValue::new("messaging.destination.name", queue.to_owned()),
                    KeyValue::new("messaging.message.id", message.id.clone()),
                    KeyValue::new("switchyard.subscriber", service.to_owned()),
                    KeyValue::new("switchyard.attempt", i64::from(attempt)),
                ]
            },
        );
        let mut guest_message =
            crate::host::guest_message(queue, message, crate::host::Received::Delivery { attempt });
        guest_message.trace_context = Some(span.trace().header());
        let started = std::time::Instant::now();
        let delivered = slot.deliver(guest_message, span.handle()).await;
        let (outcome, delivered) = match delivered {
            Ok(Ok(())) => ("acked", Delivered::Acked),
            Ok(Err(reason)) => {
                span.fail(|| format!("refused: {reason}"));
                let why = format!("`{service}` refused it: {reason}");
                ("refused", Delivered::Failed(why))
            }
            Err(busy @ crate::wasm::SlotError::Busy { .. }) => {
                ("busy", Delivered::NotNow(busy.to_string()))
            }
            Err(failed) => {
                span.fail(|| failed.to_string());
                ("failed", Delivered::Failed(failed.to_string()))
            }
        };
        if self.request_log.sampled(service) {
            tracing::info!(
                target: "switchyard::requests",
                kind = "delivery",
                service,
                queue,
                id = %message.id,
                attempt,
                outcome,
                duration_us = started.elapsed().as_micros() as u64,
                trace_id = %span.trace().trace_id(),
                "delivery"
            );
        }
        Some(delivered)
    }
}

impl Subscribers {
    /// Delivers to `service` on this node for peer `node`: a service that does not run here
    /// is not now (the peer offers it again, maybe elsewhere).
    async fn deliver_for_peer(
        &self,
        service: &str,
        queue: &str,
        message: &messaging::StoredMessage,
        attempt: u32,
        node: &str,
    ) -> messaging::Delivered {
        self.deliver_here(service, queue, message, attempt)
            .await
            .unwrap_or_else(|| {
                messaging::Delivered::NotNow(format!("`{service}` does not run on node `{node}`"))
            })
    }
}

impl messaging::Subscribers for Subscribers {
    fn deliver<'a>(
        &'a self,
        service: &'a str,
        queue: &'a str,
        message: &'a messaging::StoredMessage,
        attempt: u32,
    ) -> crate::util::BoxFuture<'a, messaging::Delivered> {
        Box::pin(async move {
            use messaging::Delivered;
            let here = self.deliver_here(service, queue, message, attempt).await;
            match (here, &self.mesh) {
                (Some(Delivered::NotNow(busy)), Some(mesh)) => {
                    // Busy here: a peer's instance may take it.
                    match mesh.deliver(service, queue, message, attempt).await {
                        Delivered::NotNow(_) => Delivered::NotNow(busy),
                        delivered => delivered,
                    }
                }
                (Some(delivered), _) => delivered,
                (None, Some(mesh)) => mesh.deliver(service, queue, message, attempt).await,
                (None, None) => Delivered::NotNow(format!("`{service}` does not run on this node")),
            }
        })
    }

    fn runs_here(&self, service: &str) -> bool {
        self.services
            .upgrade()
            .is_some_and(|services| services.slot(service).is_ok())
    }
}

/// Discovery for a node with a QUIC transport.
struct Membership {
    backend: Arc<dyn discovery::Membership>,
    stop: watch::Sender<bool>,
    running: tokio::task::JoinHandle<()>,
    transport: Arc<Transport>,
}

/// Routes each frame from a peer to the subsystem that answers it.
struct PeerFrames {
    rpc: rpc::PeerHandler,
    /// `None` with etcd discovery: peers do not gossip with this node.
    gossip: Option<Arc<discovery::Gossip>>,
    /// Takes peers' sends to this node's queues.
    broker: Arc<messaging::Broker>,
    /// Takes peers' deliveries to this node's services.
    subscribers: Subscribers,
    /// Tells a peer's live page the calls this node's services made.
    metrics: crate::telemetry::Metrics,
}

impl FrameHandler for PeerFrames {
    async fn handle(&self, peer: &Peer, frame: Frame) -> Frame {
        match frame {
            Frame::Gossip { .. } | Frame::Goodbye { .. } => match &self.gossip {
                Some(gossip) => gossip.answer(peer, frame),
                None => Frame::Failed {
                    kind: FailureKind::BadRequest,
                    message: "this node finds peers through etcd; set the same \
                              [node.discovery] on every node"
                        .into(),
                },
            },
            Frame::Send {
                queue,
                sender,
                trace_context,
                message,
                deadline_ms: _,
            } => match self
                .broker
                .send_here(&queue, &sender, trace_context, message)
                .await
            {
                Ok(receipt) => Frame::Sent(receipt),
                Err(refused) => Frame::NotSent(refused),
            },
            Frame::Read { topic, from, max } => {
                match self.broker.read_here(&topic, from, max as usize).await {
                    Ok((messages, next)) => Frame::Messages { messages, next },
                    Err(refused) => Frame::NotSent(refused),
                }
            }
            Frame::Deliver {
                service,
                queue,
                message,
                attempt,
            } => {
                use messaging::Delivered;
                let delivered = self
                    .subscribers
                    .deliver_for_peer(&service, &queue, &message, attempt, &peer.node)
                    .await;
                match delivered {
                    Delivered::Acked => Frame::Ack,
                    Delivered::Failed(why) => Frame::Failed {
                        kind: FailureKind::Remote,
                        message: why,
                    },
                    Delivered::NotNow(why) => Frame::Failed {
                        kind: FailureKind::Unavailable,
                        message: why,
                    },
                }
            }
            Frame::DeliverMany {
                service,
                queue,
                deliveries,
            } => {
                // Each on its own task, as one `Deliver` frame each would be: a guest that
                // waits does not hold up the others, and the calls spread over the cores.
                let (service, queue): (Arc<str>, Arc<str>) = (service.into(), queue.into());
                let node: Arc<str> = peer.node.clone();
                // What a delivery whose task ended without an outcome (it panicked) answers:
                // offered again.
                let cut_off = messaging::Delivered::NotNow(format!(
                    "the delivery to `{service}` on node `{node}` ended without an outcome"
                ));
                let mut outcomes = vec![cut_off; deliveries.len()];
                let mut running = tokio::task::JoinSet::new();
                for (index, (message, attempt)) in deliveries.into_iter().enumerate() {
                    let (subscribers, service, queue, node) = (
                        self.subscribers.clone(),
                        service.clone(),
                        queue.clone(),
                        node.clone(),
                    );
                    running.spawn(async move {
                        // Boxed: its state is ~3 KiB, which the task would copy as it is
                        // spawned and as it finishes.
                        let delivered = Box::pin(
                            subscribers
                                .deliver_for_peer(&service, &queue, &message, attempt, &node),
                        )
                        .await;
                        (index, delivered)
                    });
                }
                while let Some(joined) = running.join_next().await {
                    if let Ok((index, delivered)) = joined
                        && let Some(slot) = outcomes.get_mut(index)
                    {
                        *slot = delivered;
                    }
                }
                Frame::Delivered { outcomes }
            }
            Frame::Answer { to, message } => match self.broker.answer_here(&to, message) {
                Ok(()) => Frame::Ack,
                Err(refused) => Frame::NotSent(refused),
            },
            Frame::AskTraffic => Frame::Traffic {
                calls: self.metrics.call_traffic(),
            },
            frame => self.rpc.handle(peer, frame).await,
        }
    }

    async fn open(&self, peer: &Peer, frame: Frame, stream: RawStream) {
        self.rpc.serve_stream(peer, frame, stream).await;
    }
}

/// Compiles (or loads from cache) and checks every component of `manifest`, without serving.
/// Blocking; this is what `switchyard check` runs after the manifest parses.
pub fn check(manifest: &Manifest) -> Result<Vec<LoadedComponent>, NodeError> {
    load_all(manifest).map(|(_, components)| components)
}

fn load_all(manifest: &Manifest) -> Result<(Engine, Vec<LoadedComponent>), NodeError> {
    // Each file is read once: its bytes shape the pool's slots (the largest component the
    // node will serve), then compile. A file that cannot be read fails as its load would.
    let mut config = engine_config(manifest);
    let files = manifest
        .services
        .iter()
        .map(|spec| {
            let bytes = std::fs::read(&spec.component).map_err(|cause| NodeError::Load {
                service: spec.name.clone(),
                at: spec.component_at.clone(),
                cause: LoadError::Read {
                    path: spec.component.clone(),
                    cause,
                },
            })?;
            config.pool.fit(&crate::wasm::needs(&bytes));
            Ok((spec, bytes))
        })
        .collect::<Result<Vec<_>, NodeError>>()?;
    let engine = Engine::new(&config)?;
    let components = files
        .into_iter()
        .map(|(spec, bytes)| {
            let failed = |cause| NodeError::Load {
                service: spec.name.clone(),
                at: spec.component_at.clone(),
                cause,
            };
            let component = engine.load_bytes(&spec.component, &bytes).map_err(failed)?;
            match manifest.consumer_of(&spec.name) {
                Some(consumer) if !component.takes_messages() => {
                    Err(failed(LoadError::TakesNoMessages {
                        path: spec.component.clone(),
                        consumer,
                    }))
                }
                _ => Ok(component),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((engine, components))
}

/// This node's part of the mesh: the QUIC transport and the registry of peers. The node
/// builds it and runs discovery on it; the rpc client gets a share to route calls with.
#[derive(Clone)]
struct Mesh {
    transport: Arc<Transport>,
    registry: Arc<discovery::Registry>,
    /// What the transport presents and what this node signs its words with (reloaded from
    /// the `[node.tls]` files when they change).
    node_cert: Arc<crate::transport::NodeCert>,
}

fn start_transport(manifest: &Manifest, addr: SocketAddr) -> Result<Mesh, NodeError> {
    let identity = match &manifest.node.tls {
        Some(tls) => Identity::from_files(&tls.ca, &tls.cert, &tls.key)?,
        None => {
            let loopback =
                addr.ip().is_loopback() && manifest.node.seeds.iter().all(|s| s.ip().is_loopback());
            if !loopback {
                return Err(NodeError::NeedsTls);
            }
            tracing::warn!(
                "QUIC uses the built-in development CA (loopback only, not secure); set \
                 [node.tls] for anything else"
            );
            Identity::development(&manifest.node.name)?
        }
    };
    let node_cert = identity.node_cert();
    if node_cert.name() != manifest.node.name {
        return Err(NodeError::NotThisNode {
            certificate: node_cert.name().to_owned(),
            node: manifest.node.name.clone(),
        });
    }
    Ok(Mesh {
        transport: Arc::new(Transport::bind(addr, &identity)?),
        registry: Arc::new(discovery::Registry::default()),
        node_cert,
    })
}

fn engine_config(manifest: &Manifest) -> EngineConfig {
    EngineConfig {
        cache_dir: Some(cache_dir(&manifest.node.data_dir)),
        pool: crate::manifest::PoolPlan::of(manifest),
    }
}

fn cache_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("compiled")
}
