//! Service-to-service calls.
//!
//! A guest calls `rpc.call("inventory@^1", "GET /items/42", body, options)`. The [`Client`]
//! parses the target, finds the callee in the node's [`Directory`], routes the method with the
//! callee's own routes (so path parameters work as for HTTP), and runs the callee's `handler`
//! in-process: no socket, no encoding beyond the component boundary. The call's budget is the
//! smaller of its `timeout-ms` and the caller's remaining deadline; the callee sees it as its
//! `deadline-ms`, and the caller never waits longer.
//!
//! A call to a service this node does not run goes to a peer that runs it (from
//! [`crate::discovery`], picked by [`balance`]) as one QUIC stream carrying a `Call` frame with the
//! remaining budget; that node's [`PeerHandler`] runs it locally and answers. The guest cannot
//! tell the two paths apart.

use std::collections::{BTreeMap, HashMap};

mod balance;

use balance::Balancer;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use crate::discovery::Registry;
use crate::manifest::{BalanceSpec, Strategy};
use crate::policy::{self, Policies};
use crate::transport::frame::{FailureKind, Frame};
use crate::transport::{RawStream, Transport, TransportError};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use tracing::Instrument;

use crate::router::{Lookup, Router};
use crate::telemetry::TRACE_HEADER;
use crate::wasm::{GuestRequest, Slot, SlotError};

/// Bytes buffered each way in a stream between two guests on one node.
const STREAM_BUFFER: usize = 64 * 1024;

/// Both directions of a raw stream, wherever its other end is.
pub(crate) struct ByteStream {
    pub(crate) reader: Box<dyn AsyncRead + Send + Unpin>,
    pub(crate) writer: Box<dyn AsyncWrite + Send + Unpin>,
}

/// Where a call or stream goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Local,
    Peer(SocketAddr),
}

/// The instances that fit a call.
enum Candidates {
    One(Route),
    /// More than one (`None` is this node), and the service's strategy.
    Several(Vec<Option<SocketAddr>>, Strategy),
}

/// A guest's `quic.connection`: one service instance its streams go to.
#[derive(Debug, Clone)]
pub(crate) struct StreamTarget {
    service: String,
    range: Option<semver::VersionReq>,
    route: Route,
    /// The node it runs on, for the guest to see.
    pub(crate) node: String,
}

/// A reply from the callee: what its handler answered.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

/// Why a call has no reply. Mirrors `call-error` in `wit/rpc.wit`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CallError {
    #[error("the call did not finish within its deadline")]
    Timeout,
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("the callee failed: {0}")]
    Remote(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("rejected by a policy: {0}")]
    Rejected(String),
}

/// One call, as the guest asked for it.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    /// `name` or `name@<semver range>`.
    pub(crate) target: String,
    /// `METHOD /path?query`.
    pub(crate) method: String,
    pub(crate) body: Vec<u8>,
    pub(crate) headers: Vec<(String, String)>,
    /// The time the caller allows, already capped by its own deadline.
    pub(crate) budget: Duration,
    /// For the callee's logs: the caller's service and a request id derived from the caller's.
    pub(crate) caller: String,
    pub(crate) request_id: String,
}

/// The services this node runs, by name, with their routes. A manifest edit replaces the
/// set whole ([`Directory::replace`]); a call keeps the callee it looked up.
#[derive(Default)]
pub(crate) struct Directory {
    node: String,
    services: arc_swap::ArcSwap<HashMap<String, Arc<Callee>>>,
}

/// Where one instance of a service runs.
#[derive(Debug, Clone)]
pub(crate) struct Instance {
    pub(crate) node: String,
    /// `None` for this node.
    pub(crate) address: Option<std::net::SocketAddr>,
    pub(crate) version: String,
}

/// One service of this node, as [`Directory::replace`] takes it.
pub(crate) struct Callee {
    pub(crate) version: semver::Version,
    pub(crate) routes: Router,
    /// Serves streams (requests come through `routes`).
    pub(crate) slot: Arc<Slot>,
}

impl Directory {
    pub(crate) fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            services: arc_swap::ArcSwap::default(),
        }
    }

    /// Makes `services` (by name) the ones local calls reach.
    pub(crate) fn replace(&self, services: HashMap<String, Callee>) {
        self.services.store(Arc::new(
            services
                .into_iter()
                .map(|(name, callee)| (name, Arc::new(callee)))
                .collect(),
        ));
    }

    fn get(&self, name: &str) -> Option<Arc<Callee>> {
        self.services.load().get(name).cloned()
    }
}

/// Makes calls on behalf of guests. Cheap to clone; every slot holds one.
#[derive(Clone, Default)]
pub(crate) struct Client {
    /// Filled once the node has built every slot (slots hold clients, the directory holds
    /// slots, so it cannot exist first). Weak, because that is a cycle: the node owns the
    /// directory, and dropping the node frees slots, instances and the transport.
    directory: Arc<OnceLock<Weak<Directory>>>,
    /// Other nodes, when this node has a QUIC transport.
    remote: Option<Arc<Remote>>,
    /// `[balance.<service>]` from the manifest.
    balance: Arc<BTreeMap<String, BalanceSpec>>,
    /// `[[bind]]` policies around calls.
    policies: Arc<Policies>,
}

/// The way to other nodes.
pub(crate) struct Remote {
    pub(crate) transport: Arc<Transport>,
    pub(crate) registry: Arc<Registry>,
    balancer: Balancer,
}

impl Remote {
    pub(crate) fn new(transport: Arc<Transport>, registry: Arc<Registry>) -> Self {
        Self {
            transport,
            registry,
            balancer: Balancer::default(),
        }
    }
}

impl Client {
    pub(crate) fn new(
        remote: Option<Arc<Remote>>,
        balance: BTreeMap<String, BalanceSpec>,
        policies: Arc<Policies>,
    ) -> Self {
        Self {
            directory: Arc::default(),
            remote,
            balance: Arc::new(balance),
            policies,
        }
    }

    /// Makes `directory` the set of callees, for as long as the caller keeps it. Later calls
    /// are ignored: a node installs it once.
    pub(crate) fn install(&self, directory: &Arc<Directory>) {
        if self.directory.set(Arc::downgrade(directory)).is_err() {
            tracing::warn!("rpc directory installed twice; keeping the first");
        }
    }

    /// Runs `call` and returns the callee's reply.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the callee's instance mid-call; nothing else is affected.
    pub(crate) async fn call(&self, call: Call) -> Result<Reply, CallError> {
        let target = call.target.clone();
        let (name, range) = parse_target(&target)?;
        parse_method(&call.method)?;
        let chain = self.policies.chain(&call.caller, name);
        if chain.is_empty() {
            return self.call_once(call, name, range.as_ref(), &[]).await;
        }
        let range = range.as_ref();
        let chain_ref = &chain;
        policy::run(&chain, call, name, |call| {
            Box::pin(self.call_once(call, name, range, chain_ref))
        })
        .await
    }

    /// One attempt: route (asking the chain's `pick`, if several instances fit), then send.
    async fn call_once(
        &self,
        call: Call,
        name: &str,
        range: Option<&semver::VersionReq>,
        chain: &[Arc<policy::Binding>],
    ) -> Result<Reply, CallError> {
        let route = match self.candidates(name, range)? {
            Candidates::One(route) => route,
            Candidates::Several(candidates, strategy) => {
                let picked = if chain.is_empty() {
                    None
                } else {
                    self.pick_by_policy(chain, &call, name, range, &candidates)
                        .await
                };
                let chosen = match (picked, &self.remote) {
                    (Some(index), _) => candidates[index],
                    (None, Some(remote)) => remote.balancer.pick(&candidates, strategy),
                    (None, None) => None,
                };
                chosen.map_or(Route::Local, Route::Peer)
            }
        };
        let (Some(remote), Route::Peer(peer)) = (&self.remote, route) else {
            let _in_flight = self
                .remote
                .as_ref()
                .map(|remote| remote.balancer.track(None));
            return self.call_local(call).await;
        };
        self.call_remote(remote, peer, name, range, call).await
    }

    /// Sends `call` to `peer`. If it never got there (no connection, no stream), the peer is
    /// ejected for a moment and another instance takes the call, within what is left of the
    /// budget; a call that may have reached its peer is never sent twice.
    async fn call_remote(
        &self,
        remote: &Remote,
        mut peer: SocketAddr,
        name: &str,
        range: Option<&semver::VersionReq>,
        call: Call,
    ) -> Result<Reply, CallError> {
        let started = std::time::Instant::now();
        let budget = call.budget;
        let mut frame = call_frame(name, call);
        let mut tried = Vec::new();
        loop {
            let left = budget.saturating_sub(started.elapsed());
            if let Frame::Call { deadline_ms, .. } = &mut frame {
                *deadline_ms = self::deadline_ms(left);
            }
            let sent = {
                let _in_flight = remote.balancer.track(Some(peer));
                send_call(remote, peer, name, &frame, left).await
            };
            let reason = match sent {
                Ok(answer) => return answer,
                Err(Undelivered(reason)) => reason,
            };
            remote.balancer.eject(peer, reason.clone());
            tried.push(peer);
            let unavailable = || CallError::Unavailable(format!("service `{name}`: {reason}"));
            let (mut others, strategy) = match self.candidates(name, range) {
                Ok(Candidates::One(Route::Local)) => (vec![None], Strategy::default()),
                Ok(Candidates::One(Route::Peer(other))) => (vec![Some(other)], Strategy::default()),
                Ok(Candidates::Several(others, strategy)) => (others, strategy),
                Err(_) => return Err(unavailable()),
            };
            others.retain(|other| other.is_none_or(|addr| !tried.contains(&addr)));
            if others.is_empty() || started.elapsed() >= budget {
                return Err(unavailable());
            }
            match remote.balancer.pick(&others, strategy) {
                Some(other) => peer = other,
                None => {
                    let Ok(mut call) = call_from_frame(frame) else {
                        return Err(unavailable());
                    };
                    call.budget = budget.saturating_sub(started.elapsed());
                    let _in_flight = remote.balancer.track(None);
                    return self.call_local(call).await;
                }
            }
        }
    }

    async fn pick_by_policy(
        &self,
        chain: &[Arc<policy::Binding>],
        call: &Call,
        name: &str,
        range: Option<&semver::VersionReq>,
        candidates: &[Option<SocketAddr>],
    ) -> Option<usize> {
        let remote = self.remote.as_ref()?;
        let instances = remote.registry.instances(name, range);
        let local_node = self.directory().map(|d| d.node.clone()).unwrap_or_default();
        let described: Vec<(String, bool, u32)> = candidates
            .iter()
            .map(|candidate| {
                let node = match candidate {
                    None => local_node.clone(),
                    Some(addr) => instances
                        .iter()
                        .find(|(a, _, _)| a == addr)
                        .map_or_else(|| addr.to_string(), |(_, node, _)| node.clone()),
                };
                let in_flight = remote.balancer.in_flight(*candidate);
                (node, candidate.is_none(), in_flight)
            })
            .collect();
        policy::pick(chain, call, name, &described).await
    }

    /// Where a call or stream to `name` (at `range`) goes: this node or a peer, by the
    /// service's balancing strategy.
    fn route(&self, name: &str, range: Option<&semver::VersionReq>) -> Result<Route, CallError> {
        Ok(match self.candidates(name, range)? {
            Candidates::One(route) => route,
            Candidates::Several(candidates, strategy) => match &self.remote {
                Some(remote) => remote
                    .balancer
                    .pick(&candidates, strategy)
                    .map_or(Route::Local, Route::Peer),
                None => Route::Local,
            },
        })
    }

    /// The instances a call to `name` (at `range`) may go to. A service that runs here only
    /// at an unfitting version routes here, so the local path can say precisely what does not
    /// fit.
    fn candidates(
        &self,
        name: &str,
        range: Option<&semver::VersionReq>,
    ) -> Result<Candidates, CallError> {
        let directory = self.directory();
        let local = directory.as_ref().and_then(|d| d.get(name));
        let local_fits = local
            .as_ref()
            .is_some_and(|callee| range.is_none_or(|range| range.matches(&callee.version)));
        let Some(remote) = &self.remote else {
            return Ok(Candidates::One(Route::Local));
        };
        let balance = self.balance.get(name).copied().unwrap_or_default();
        if local_fits && balance.prefer_local {
            return Ok(Candidates::One(Route::Local));
        }
        let mut peers = remote.registry.candidates(name, range);
        let unreachable = remote.balancer.retain_reachable(&mut peers);
        let mut candidates: Vec<Option<SocketAddr>> = peers.into_iter().map(Some).collect();
        if local_fits {
            candidates.insert(0, None);
        }
        if candidates.is_empty() {
            if local.is_some() {
                return Ok(Candidates::One(Route::Local));
            }
            if let Some(reason) = unreachable {
                return Err(CallError::Unavailable(format!(
                    "service `{name}`: no node that runs it could be reached in the last \
                     {:?} ({reason})",
                    balance::EJECTION
                )));
            }
            return Err(CallError::Unavailable(match range {
                Some(range) => format!("no node runs service `{name}` at `{range}`"),
                None => format!("no service named `{name}` is running on this node or its peers"),
            }));
        }
        if let [only] = candidates[..] {
            return Ok(Candidates::One(only.map_or(Route::Local, Route::Peer)));
        }
        Ok(Candidates::Several(candidates, balance.strategy))
    }

    /// Picks the instance a guest's `quic.connect(target)` goes to.
    pub(crate) fn connect(&self, target: &str) -> Result<StreamTarget, CallError> {
        let (name, range) = parse_target(target)?;
        let route = self.route(name, range.as_ref())?;
        let node = match route {
            Route::Local => self.directory().map(|d| d.node.clone()).unwrap_or_default(),
            Route::Peer(peer) => self
                .remote
                .as_ref()
                .and_then(|remote| {
                    let instances = remote.registry.instances(name, range.as_ref());
                    instances.into_iter().find(|(addr, _, _)| *addr == peer)
                })
                .map(|(_, node, _)| node)
                .unwrap_or_else(|| peer.to_string()),
        };
        Ok(StreamTarget {
            service: name.to_owned(),
            range,
            route,
            node,
        })
    }

    /// Opens a raw stream on a connection from [`Client::connect`]; the callee's
    /// `stream-handler` runs on a fresh instance for at most `budget` (capped by its own
    /// timeout).
    pub(crate) async fn open_stream(
        &self,
        target: &StreamTarget,
        caller: &str,
        budget: Duration,
    ) -> Result<ByteStream, CallError> {
        match target.route {
            Route::Local => {
                let slot = self.local_stream_slot(&target.service, target.range.as_ref())?;
                local_pipe(&slot, caller.to_owned(), budget).map_err(slot_error)
            }
            Route::Peer(peer) => {
                let remote = self.remote.as_ref().ok_or_else(|| {
                    CallError::Unavailable("this node has no QUIC transport".into())
                })?;
                let opening = Frame::OpenStream {
                    service: target.service.clone(),
                    caller: caller.to_owned(),
                    deadline_ms: deadline_ms(budget),
                };
                match remote.transport.open_stream(peer, &opening, budget).await {
                    Ok(Ok(stream)) => Ok(ByteStream {
                        reader: Box::new(stream.recv),
                        writer: Box::new(stream.send),
                    }),
                    Ok(Err(Frame::Failed { kind, message })) => Err(failure(kind, message)),
                    Ok(Err(other)) => Err(CallError::Remote(format!(
                        "peer {peer} answered a stream with {other:?}"
                    ))),
                    Err(TransportError::TimedOut { .. }) => Err(CallError::Timeout),
                    Err(error) => Err(CallError::Unavailable(format!(
                        "service `{}`: {error}",
                        target.service
                    ))),
                }
            }
        }
    }

    fn local_stream_slot(
        &self,
        name: &str,
        range: Option<&semver::VersionReq>,
    ) -> Result<Arc<Slot>, CallError> {
        let directory = self.running_directory()?;
        Ok(local_callee(&directory, name, range)?.slot.clone())
    }

    fn running_directory(&self) -> Result<Arc<Directory>, CallError> {
        self.directory()
            .ok_or_else(|| CallError::Unavailable("the node is still starting".into()))
    }

    fn directory(&self) -> Option<Arc<Directory>> {
        self.directory.get().and_then(Weak::upgrade)
    }

    /// Healthy instances of `target` (`name` or `name@range`): this node's first, then peers'.
    pub(crate) fn resolve(&self, target: &str) -> Result<Vec<Instance>, CallError> {
        let (name, range) = parse_target(target)?;
        let mut found = Vec::new();
        let directory = self.directory();
        if let Some((node, callee)) = directory
            .as_ref()
            .and_then(|directory| Some((&directory.node, directory.get(name)?)))
            && range
                .as_ref()
                .is_none_or(|range| range.matches(&callee.version))
        {
            found.push(Instance {
                node: node.clone(),
                address: None,
                version: callee.version.to_string(),
            });
        }
        if let Some(remote) = &self.remote {
            found.extend(
                remote
                    .registry
                    .instances(name, range.as_ref())
                    .into_iter()
                    .map(|(address, node, version)| Instance {
                        node,
                        address: Some(address),
                        version: version.to_string(),
                    }),
            );
        }
        Ok(found)
    }

    /// Runs `call` on this node only.
    pub(crate) async fn call_local(&self, call: Call) -> Result<Reply, CallError> {
        let (name, range) = parse_target(&call.target)?;
        let (method, path, query) = parse_method(&call.method)?;
        let directory = self.running_directory()?;
        let callee = local_callee(&directory, name, range.as_ref())?;
        let (target, params) = match callee.routes.lookup(method, path) {
            Lookup::Found { target, params } => (target, params),
            Lookup::WrongMethod(allowed) => {
                return Err(CallError::BadRequest(format!(
                    "service `{name}` has no route for {method} {path}; that path takes {}",
                    allowed.join(", ")
                )));
            }
            Lookup::NotFound => {
                return Err(CallError::BadRequest(format!(
                    "service `{name}` has no route for {method} {path}"
                )));
            }
        };
        let budget = call.budget.min(target.slot.timeout());
        let mut headers = call.headers;
        headers.push(("x-switchyard-caller".into(), call.caller));
        let request = GuestRequest {
            method: method.to_owned(),
            path: path.to_owned(),
            query: query.map(str::to_owned),
            headers,
            params,
            body: call.body,
            request_id: call.request_id,
            deadline_ms: deadline_ms(budget),
        };
        // The slot stops the callee at the request's `deadline_ms`, which is this budget.
        let span = tracing::debug_span!("rpc", callee = name, route = &*target.pattern);
        match target.slot.handle(request).instrument(span).await {
            Ok(response) => Ok(Reply {
                status: response.status,
                headers: response.headers,
                body: response.body,
            }),
            Err(error) => Err(slot_error(error)),
        }
    }
}

/// A budget as the `deadline-ms` a callee sees (saturating: budgets beyond `u32` ms are
/// "no deadline" in practice).
pub(crate) fn deadline_ms(budget: Duration) -> u32 {
    u32::try_from(budget.as_millis()).unwrap_or(u32::MAX)
}

/// A call that never reached its peer, and why.
struct Undelivered(String);

/// `call` as a frame for the node that runs `name`.
fn call_frame(name: &str, call: Call) -> Frame {
    let (trace, headers): (Vec<_>, Vec<_>) = call
        .headers
        .into_iter()
        .partition(|(header, _)| header == TRACE_HEADER);
    Frame::Call {
        service: name.to_owned(),
        method: call.method,
        headers,
        body: call.body,
        deadline_ms: deadline_ms(call.budget),
        caller: call.caller,
        request_id: call.request_id,
        trace_context: trace.into_iter().next().map(|(_, value)| value),
    }
}

/// The call a `Call` frame carries (the inverse of [`call_frame`]); any other frame back.
fn call_from_frame(frame: Frame) -> Result<Call, Box<Frame>> {
    let Frame::Call {
        service,
        method,
        mut headers,
        body,
        deadline_ms,
        caller,
        request_id,
        trace_context,
    } = frame
    else {
        return Err(Box::new(frame));
    };
    headers.extend(trace_context.map(|value| (TRACE_HEADER.to_owned(), value)));
    Ok(Call {
        target: service,
        method,
        body,
        headers,
        budget: Duration::from_millis(u64::from(deadline_ms)),
        caller,
        request_id,
    })
}

async fn send_call(
    remote: &Remote,
    peer: SocketAddr,
    name: &str,
    frame: &Frame,
    budget: Duration,
) -> Result<Result<Reply, CallError>, Undelivered> {
    let span = tracing::debug_span!("rpc", callee = name, %peer);
    let answer = match remote
        .transport
        .request(peer, frame, budget)
        .instrument(span)
        .await
    {
        Ok(Frame::Reply {
            status,
            headers,
            body,
        }) => Ok(Reply {
            status,
            headers,
            body,
        }),
        Ok(Frame::Failed { kind, message }) => Err(failure(kind, message)),
        Ok(other) => Err(CallError::Remote(format!(
            "peer {peer} answered with {other:?}"
        ))),
        Err(TransportError::TimedOut { .. }) => Err(CallError::Timeout),
        Err(error @ TransportError::Unreachable { .. }) => {
            return Err(Undelivered(error.to_string()));
        }
        Err(error) => Err(CallError::Unavailable(format!("service `{name}`: {error}"))),
    };
    Ok(answer)
}

/// `name` on this node, if it runs at a version in `range`.
fn local_callee(
    directory: &Directory,
    name: &str,
    range: Option<&semver::VersionReq>,
) -> Result<Arc<Callee>, CallError> {
    let callee = directory
        .get(name)
        .ok_or_else(|| CallError::Unavailable(format!("no service named `{name}` is running")))?;
    if let Some(range) = range
        && !range.matches(&callee.version)
    {
        return Err(CallError::Unavailable(format!(
            "service `{name}` runs version {}, which does not match `{range}`",
            callee.version
        )));
    }
    Ok(callee)
}

/// An in-memory stream to a `stream-handler` of `slot`, admitted (or refused) at once.
fn local_pipe(slot: &Arc<Slot>, caller: String, budget: Duration) -> Result<ByteStream, SlotError> {
    let (ours, theirs) = tokio::io::duplex(STREAM_BUFFER);
    let (their_reader, their_writer) = tokio::io::split(theirs);
    slot.serve_stream(
        ByteStream {
            reader: Box::new(their_reader),
            writer: Box::new(their_writer),
        },
        caller,
        budget,
    )?;
    let (reader, writer) = tokio::io::split(ours);
    Ok(ByteStream {
        reader: Box::new(reader),
        writer: Box::new(writer),
    })
}

fn failure(kind: FailureKind, message: String) -> CallError {
    match kind {
        FailureKind::Timeout => CallError::Timeout,
        FailureKind::Unavailable => CallError::Unavailable(message),
        FailureKind::Remote => CallError::Remote(message),
        FailureKind::BadRequest => CallError::BadRequest(message),
        FailureKind::Rejected => CallError::Rejected(message),
    }
}

fn to_failure(error: CallError) -> Frame {
    let (kind, message) = match error {
        CallError::Timeout => (FailureKind::Timeout, String::new()),
        CallError::Unavailable(m) => (FailureKind::Unavailable, m),
        CallError::Remote(m) => (FailureKind::Remote, m),
        CallError::BadRequest(m) => (FailureKind::BadRequest, m),
        CallError::Rejected(m) => (FailureKind::Rejected, m),
    };
    Frame::Failed { kind, message }
}

fn slot_error(error: SlotError) -> CallError {
    match error {
        SlotError::Busy { .. } | SlotError::NoStreams { .. } => {
            CallError::Unavailable(error.to_string())
        }
        SlotError::Timeout { .. } => CallError::Timeout,
        SlotError::MemoryLimit { .. } | SlotError::Trap { .. } => {
            CallError::Remote(error.to_string())
        }
    }
}

/// Runs other nodes' calls and streams here.
pub(crate) struct PeerHandler {
    pub(crate) client: Client,
}

impl PeerHandler {
    /// Serves a peer guest's raw stream with a local `stream-handler`.
    pub(crate) async fn serve_stream(&self, frame: Frame, mut stream: RawStream) {
        let Frame::OpenStream {
            service,
            caller,
            deadline_ms,
        } = frame
        else {
            return;
        };
        let budget = Duration::from_millis(u64::from(deadline_ms));
        // Admit first (service, export, instance limit), then say yes: a refusal is clear.
        let admitted = self
            .client
            .local_stream_slot(&service, None)
            .and_then(|slot| local_pipe(&slot, caller, budget).map_err(slot_error));
        let local = match admitted {
            Ok(local) => local,
            Err(error) => {
                let _ = stream.answer(&to_failure(error)).await;
                let _ = stream.send.finish();
                return;
            }
        };
        if stream.answer(&Frame::Ack).await.is_err() {
            return;
        }
        // Splice the QUIC stream and the guest's in-memory end, both ways.
        let ByteStream {
            mut reader,
            mut writer,
        } = local;
        let RawStream { mut send, mut recv } = stream;
        let inbound = async {
            let _ = tokio::io::copy(&mut recv, &mut writer).await;
            let _ = writer.shutdown().await;
        };
        let outbound = async {
            let _ = tokio::io::copy(&mut reader, &mut send).await;
            let _ = send.finish();
        };
        tokio::join!(inbound, outbound);
    }

    /// Answers a peer's call frame.
    pub(crate) async fn handle(&self, frame: Frame) -> Frame {
        let call = match call_from_frame(frame) {
            Ok(call) => call,
            Err(other) => {
                return Frame::Failed {
                    kind: FailureKind::BadRequest,
                    message: format!("rpc does not answer {other:?} frames"),
                };
            }
        };
        match self.client.call_local(call).await {
            Ok(reply) => Frame::Reply {
                status: reply.status,
                headers: reply.headers,
                body: reply.body,
            },
            Err(error) => to_failure(error),
        }
    }
}

/// `inventory` or `inventory@^1.2`.
fn parse_target(target: &str) -> Result<(&str, Option<semver::VersionReq>), CallError> {
    let (name, range) = match target.split_once('@') {
        Some((name, range)) => {
            let range = semver::VersionReq::parse(range).map_err(|err| {
                CallError::BadRequest(format!(
                    "`{target}`: `{range}` is not a semver range ({err}); write e.g. `{name}@^1`"
                ))
            })?;
            (name, Some(range))
        }
        None => (target, None),
    };
    if name.is_empty() {
        return Err(CallError::BadRequest(format!(
            "`{target}` names no service; write e.g. `inventory` or `inventory@^1`"
        )));
    }
    Ok((name, range))
}

/// `GET /items/42?x=1` → (`GET`, `/items/42`, `Some("x=1")`).
fn parse_method(method: &str) -> Result<(&str, &str, Option<&str>), CallError> {
    let bad = || {
        CallError::BadRequest(format!(
            "method `{method}` is not `METHOD /path`, e.g. `GET /items/42`"
        ))
    };
    let (verb, target) = method.trim().split_once(' ').ok_or_else(bad)?;
    if verb.is_empty() || !verb.bytes().all(|b| b.is_ascii_uppercase()) || !target.starts_with('/')
    {
        return Err(bad());
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    Ok((verb, path, query))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_methods_parse_or_say_what_is_wrong() {
        assert_eq!(
            parse_target("inventory").map(|(n, r)| (n, r.is_none())),
            Ok(("inventory", true))
        );
        let (name, range) = parse_target("inventory@^1").unwrap_or(("", None));
        assert_eq!(name, "inventory");
        assert!(range.is_some_and(|r| r.matches(&semver::Version::new(1, 4, 0))));
        assert!(
            matches!(parse_target("inventory@banana"), Err(CallError::BadRequest(m)) if m.contains("not a semver range"))
        );
        assert!(matches!(parse_target("@^1"), Err(CallError::BadRequest(_))));
        assert_eq!(
            parse_method("GET /a/b?x=1"),
            Ok(("GET", "/a/b", Some("x=1")))
        );
        assert!(matches!(
            parse_method("get /a"),
            Err(CallError::BadRequest(_))
        ));
        assert!(matches!(parse_method("/a"), Err(CallError::BadRequest(_))));
    }
}
