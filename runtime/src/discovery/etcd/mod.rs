//! The etcd backend: one key per node under a lease, and a watch on the prefix.
//!
//! It speaks etcd's v3 JSON gateway (`POST /v3/...`, served by every etcd since 3.4) over
//! hyper, which the node already has. The `etcd-client` crate speaks gRPC instead, but it
//! generates its code with `protoc` at build time, which a fresh machine does not have and the
//! demo must not need.
//!
//! A session: grant a lease (TTL [`LEASE_TTL_S`], etcd may raise it), put
//! `<prefix>/nodes/<quic address>` = this node's [`Member`] as JSON under it (signed, as in
//! gossip: a node believes an entry only if the node it names signed it), read the
//! prefix, then watch it from the next revision while renewing the lease every third of its
//! TTL. Any failure ends the session and a new one starts after [`RETRY`]; what the registry
//! knew stays until the resync (etcd clients generally keep serving their last view during an
//! outage). Leaving revokes the lease, which deletes the key at once.
//!
//! With `tls` in `[node.discovery]` every endpoint is https: etcd's certificate must chain to
//! the given CA and name the endpoint's host (DNS name or IP), and the node presents its
//! client certificate when one is given (etcd's `--client-cert-auth`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

use super::{BoxFuture, LEAVE_TIMEOUT, Member, Membership, Registry};
use crate::transport::{NodeCert, TransportError};
use client::{Sender, connect, request};

pub(crate) use client::connector;

mod client;

/// The lease TTL asked for; etcd grants at least its own minimum (2 s by default).
const LEASE_TTL_S: u64 = 2;
/// Pause between failed sessions.
const RETRY: Duration = Duration::from_millis(500);
/// Connecting to and hearing back from etcd, for everything but the watch.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub(crate) enum EtcdError {
    #[error("etcd at {endpoint} is unreachable: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("etcd at {endpoint} answered {path} with {status}: {body}")]
    Status {
        endpoint: String,
        path: &'static str,
        status: u16,
        body: String,
    },
    #[error("etcd answered {path} with something unexpected: {detail}")]
    Unexpected { path: &'static str, detail: String },
    #[error("the lease ran out (etcd unreachable for longer than its TTL?)")]
    LeaseLost,
    #[error("etcd TLS: {what} {}: {reason}", path.display())]
    Tls {
        what: &'static str,
        path: std::path::PathBuf,
        reason: String,
    },
}

/// etcd membership for one node.
pub(crate) struct Etcd {
    registry: Arc<Registry>,
    endpoints: Vec<String>,
    prefix: String,
    /// Set: the endpoints are https.
    tls: Option<TlsConnector>,
    /// A connection kept open between requests, with its endpoint: lease keep-alives come
    /// every third of the TTL, and over https each new connection is a TLS handshake.
    kept: Mutex<Option<(String, Sender)>>,
    /// Signs this node's entry and checks its peers'.
    cert: Arc<NodeCert>,
    me: Mutex<Member>,
    address: SocketAddr,
    /// Wakes the session to put the new `me` under its lease.
    announced: tokio::sync::Notify,
    lease: Mutex<Option<String>>,
    /// Peers this backend put into the registry (by their key's address), with their node
    /// and incarnation, for deletes and resyncs.
    known: Mutex<HashMap<SocketAddr, (String, u64)>>,
}

impl Etcd {
    pub(crate) fn new(
        registry: Arc<Registry>,
        endpoints: Vec<String>,
        prefix: String,
        tls: Option<TlsConnector>,
        cert: Arc<NodeCert>,
        mut me: Member,
    ) -> Result<Self, TransportError> {
        super::sign(&mut me, &cert)?;
        Ok(Self {
            registry,
            endpoints,
            prefix,
            tls,
            kept: Mutex::new(None),
            cert,
            address: me.address,
            me: Mutex::new(me),
            announced: tokio::sync::Notify::new(),
            lease: Mutex::new(None),
            known: Mutex::new(HashMap::new()),
        })
    }

    fn nodes_prefix(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    async fn session(&self, stop: &mut watch::Receiver<bool>) -> Result<(), EtcdError> {
        let granted = self
            .post("/v3/lease/grant", json!({ "TTL": LEASE_TTL_S }))
            .await?;
        let lease = string_field(&granted, "ID", "/v3/lease/grant")?;
        let ttl = string_field(&granted, "TTL", "/v3/lease/grant")?
            .parse::<u64>()
            .unwrap_or(LEASE_TTL_S)
            .max(1);
        if let Ok(mut slot) = self.lease.lock() {
            *slot = Some(lease.clone());
        }
        let key = self.register(&lease).await?;
        tracing::info!(%key, lease_ttl_s = ttl, "registered in etcd");

        let (start, end) = (self.nodes_prefix(), prefix_end(&self.nodes_prefix()));
        let range = self
            .post(
                "/v3/kv/range",
                json!({ "key": BASE64.encode(&start), "range_end": BASE64.encode(&end) }),
            )
            .await?;
        let revision = range
            .pointer("/header/revision")
            .and_then(Value::as_str)
            .and_then(|r| r.parse::<i64>().ok())
            .ok_or_else(|| EtcdError::Unexpected {
                path: "/v3/kv/range",
                detail: "no header.revision".into(),
            })?;
        self.resync(range.get("kvs").and_then(Value::as_array));

        let (endpoint, mut body) = self
            .open_stream(
                "/v3/watch",
                json!({ "create_request": {
                    "key": BASE64.encode(&start),
                    "range_end": BASE64.encode(&end),
                    "start_revision": (revision + 1).to_string(),
                }}),
            )
            .await?;
        let mut keepalive = tokio::time::interval(Duration::from_millis(ttl * 1000 / 3));
        keepalive.tick().await;
        let mut buffer = Vec::new();
        loop {
            tokio::select! {
                // The guard `wait_for` returns is not Send: drop it inside.
                _ = async { stop.wait_for(|stop| *stop).await.is_ok() } => return Ok(()),
                _ = self.announced.notified() => {
                    let key = self.register(&lease).await?;
                    tracing::info!(%key, "announced a new set of services in etcd");
                }
                _ = keepalive.tick() => {
                    let renewed = self.post("/v3/lease/keepalive", json!({ "ID": lease })).await?;
                    let left = renewed
                        .pointer("/result/TTL")
                        .and_then(Value::as_str)
                        .and_then(|ttl| ttl.parse::<i64>().ok())
                        .unwrap_or(0);
                    if left <= 0 {
                        return Err(EtcdError::LeaseLost);
                    }
                }
                chunk = body.frame() => {
                    let data = match chunk {
                        Some(Ok(frame)) => frame.into_data().unwrap_or_default(),
                        Some(Err(err)) => return Err(EtcdError::Unreachable {
                            endpoint, reason: format!("watch broke: {err}"),
                        }),
                        None => return Err(EtcdError::Unreachable {
                            endpoint, reason: "watch ended".into(),
                        }),
                    };
                    buffer.extend_from_slice(&data);
                    while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buffer.drain(..=end).collect();
                        self.on_watch_message(&line)?;
                    }
                }
            }
        }
    }

    /// Puts this node's entry under `lease`; returns its key.
    async fn register(&self, lease: &str) -> Result<String, EtcdError> {
        let key = format!("{}{}", self.nodes_prefix(), self.address);
        let me = self
            .me
            .lock()
            .map(|me| me.clone())
            .map_err(|_| EtcdError::Unexpected {
                path: "/v3/kv/put",
                detail: "this node's entry is poisoned".into(),
            })?;
        let value = serde_json::to_vec(&me).map_err(|err| EtcdError::Unexpected {
            path: "/v3/kv/put",
            detail: err.to_string(),
        })?;
        self.post(
            "/v3/kv/put",
            json!({ "key": BASE64.encode(&key), "value": BASE64.encode(value), "lease": lease }),
        )
        .await?;
        Ok(key)
    }

    fn on_watch_message(&self, line: &[u8]) -> Result<(), EtcdError> {
        let unexpected = |detail: String| EtcdError::Unexpected {
            path: "/v3/watch",
            detail,
        };
        let message: Value =
            serde_json::from_slice(line).map_err(|err| unexpected(err.to_string()))?;
        if let Some(error) = message.get("error") {
            return Err(unexpected(error.to_string()));
        }
        let Some(result) = message.get("result") else {
            return Ok(());
        };
        if result.get("canceled").and_then(Value::as_bool) == Some(true) {
            return Err(unexpected(format!("watch canceled: {result}")));
        }
        for event in result
            .get("events")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let deleted = event.get("type").and_then(Value::as_str) == Some("DELETE");
            let Some(kv) = event.get("kv") else { continue };
            if deleted {
                if let Some(address) = self.address_of(kv) {
                    self.drop_peer(address);
                }
            } else if let Some(member) = self.member_of(kv) {
                self.add_peer(&member);
            }
        }
        Ok(())
    }

    fn resync(&self, kvs: Option<&Vec<Value>>) {
        let members: Vec<Member> = kvs
            .into_iter()
            .flatten()
            .filter_map(|kv| self.member_of(kv))
            .collect();
        let stale: Vec<SocketAddr> = self
            .known
            .lock()
            .map(|known| {
                known
                    .keys()
                    .filter(|address| !members.iter().any(|m| m.address == **address))
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        for address in stale {
            self.drop_peer(address);
        }
        for member in &members {
            self.add_peer(member);
        }
    }

    fn add_peer(&self, member: &Member) {
        if member.address == self.address {
            return;
        }
        if let Err(error) = self.registry.learn_signed(member, None, &self.cert) {
            tracing::warn!(key_address = %member.address, %error, "refused an entry in etcd");
            return;
        }
        if let Ok(mut known) = self.known.lock() {
            known.insert(member.address, (member.node.clone(), member.incarnation));
        }
    }

    fn drop_peer(&self, address: SocketAddr) {
        let incarnation = self
            .known
            .lock()
            .ok()
            .and_then(|mut known| known.remove(&address));
        if let Some((node, incarnation)) = incarnation {
            tracing::info!(%node, peer = %address, "peer left etcd");
            self.registry.forget(&node, incarnation);
        }
    }

    /// The member an etcd entry holds, if it decodes and is for the address its key names
    /// (a delete of the key is what removes it).
    fn member_of(&self, kv: &Value) -> Option<Member> {
        let member = decode_member(kv)?;
        if self.address_of(kv) != Some(member.address) {
            tracing::warn!(node = %member.node, address = %member.address, "refused an etcd entry under another address's key");
            return None;
        }
        Some(member)
    }

    fn address_of(&self, kv: &Value) -> Option<SocketAddr> {
        let key = BASE64.decode(kv.get("key")?.as_str()?).ok()?;
        let key = String::from_utf8(key).ok()?;
        key.strip_prefix(&self.nodes_prefix())?.parse().ok()
    }

    /// One JSON request to the first endpoint that answers.
    async fn post(&self, path: &'static str, body: Value) -> Result<Value, EtcdError> {
        let body = &body;
        self.first_endpoint(path, |endpoint| async move {
            let (response, sender) = self.request_on_kept(&endpoint, path, body).await?;
            let status = response.status().as_u16();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|err| EtcdError::Unreachable {
                    endpoint: endpoint.clone(),
                    reason: err.to_string(),
                })?
                .to_bytes();
            // The answer is read whole, so the connection can take the next request.
            self.keep(endpoint.clone(), sender);
            if status != 200 {
                return Err(EtcdError::Status {
                    endpoint,
                    path,
                    status,
                    body: String::from_utf8_lossy(&bytes).into_owned(),
                });
            }
            serde_json::from_slice::<Value>(&bytes).map_err(|err| EtcdError::Unexpected {
                path,
                detail: err.to_string(),
            })
        })
        .await
    }

    /// Sends on the kept connection to `endpoint` if there is one, else (or if that one was
    /// closed meanwhile: etcd restarted, an idle timeout) on a new one.
    async fn request_on_kept(
        &self,
        endpoint: &str,
        path: &'static str,
        body: &Value,
    ) -> Result<(hyper::Response<Incoming>, Sender), EtcdError> {
        let kept = self
            .kept
            .lock()
            .ok()
            .and_then(|mut kept| kept.take())
            .filter(|(at, sender)| at == endpoint && !sender.is_closed());
        if let Some((_, mut sender)) = kept
            && let Ok(response) = request(&mut sender, endpoint, path, body).await
        {
            return Ok((response, sender));
        }
        let mut sender = connect(endpoint, self.tls.as_ref()).await?;
        let response = request(&mut sender, endpoint, path, body).await?;
        Ok((response, sender))
    }

    /// Keeps `sender` for the next request.
    fn keep(&self, endpoint: String, sender: Sender) {
        if let Ok(mut kept) = self.kept.lock() {
            *kept = Some((endpoint, sender));
        }
    }

    /// A streaming request (the watch) to the first endpoint that accepts it.
    async fn open_stream(
        &self,
        path: &'static str,
        body: Value,
    ) -> Result<(String, Incoming), EtcdError> {
        let body = &body;
        self.first_endpoint(path, |endpoint| async move {
            // The watch holds its connection for as long as it runs: always a new one.
            let mut sender = connect(&endpoint, self.tls.as_ref()).await?;
            let response = request(&mut sender, &endpoint, path, body).await?;
            if response.status() != 200 {
                return Err(EtcdError::Status {
                    endpoint,
                    path,
                    status: response.status().as_u16(),
                    body: String::new(),
                });
            }
            Ok((endpoint, response.into_body()))
        })
        .await
    }

    /// Tries `attempt` on each endpoint in turn, each within [`REQUEST_TIMEOUT`], until one
    /// answers; etcd's own refusal (a status) is final, an unreachable endpoint is skipped.
    async fn first_endpoint<T, F>(
        &self,
        path: &'static str,
        attempt: impl Fn(String) -> F,
    ) -> Result<T, EtcdError>
    where
        F: std::future::Future<Output = Result<T, EtcdError>>,
    {
        let mut last = None;
        for endpoint in &self.endpoints {
            match tokio::time::timeout(REQUEST_TIMEOUT, attempt(endpoint.clone())).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error @ EtcdError::Status { .. })) => return Err(error),
                Ok(Err(error)) => last = Some(error),
                Err(_) => {
                    last = Some(EtcdError::Unreachable {
                        endpoint: endpoint.clone(),
                        reason: format!("no answer within {REQUEST_TIMEOUT:?}"),
                    })
                }
            }
        }
        Err(last.unwrap_or(EtcdError::Unexpected {
            path,
            detail: "no endpoints".into(),
        }))
    }
}

impl Membership for Etcd {
    fn announce(&self, services: Vec<(String, String)>, queues: Vec<String>) {
        if let Ok(mut me) = self.me.lock() {
            super::reincarnate(&mut me, services, queues, &self.cert);
        }
        // A session that is not running yet (or retrying) puts the new entry when it starts.
        self.announced.notify_one();
    }

    fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            loop {
                match self.session(&mut stop).await {
                    Ok(()) => return,
                    Err(error) => tracing::warn!(%error, "etcd discovery session ended; retrying"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = stop.wait_for(|stop| *stop) => return,
                }
            }
        })
    }

    fn leave(self: Arc<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let lease = self.lease.lock().ok().and_then(|mut lease| lease.take());
            let Some(lease) = lease else { return };
            let revoke = self.post("/v3/lease/revoke", json!({ "ID": lease }));
            match tokio::time::timeout(LEAVE_TIMEOUT, revoke).await {
                Ok(Ok(_)) => tracing::info!("left etcd (lease revoked)"),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "could not leave etcd; the lease will run out")
                }
                Err(_) => tracing::warn!("etcd did not answer the goodbye; the lease will run out"),
            }
        })
    }

    fn backend(&self) -> &'static str {
        "etcd"
    }
}

fn decode_member(kv: &Value) -> Option<Member> {
    let value = BASE64.decode(kv.get("value")?.as_str()?).ok()?;
    serde_json::from_slice(&value).ok()
}

fn string_field(value: &Value, field: &str, path: &'static str) -> Result<String, EtcdError> {
    value
        .get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| EtcdError::Unexpected {
            path,
            detail: format!("no `{field}` in {value}"),
        })
}

/// The smallest key after every key that starts with `prefix` (etcd's `range_end`).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
