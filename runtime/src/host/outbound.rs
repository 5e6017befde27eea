//! A guest's outgoing HTTP to hosts outside the mesh.
//!
//! Nothing leaves unless the service's manifest allows it: `allowed_outbound_hosts` lists
//! `scheme://host[:port]` patterns ([`OutboundSpec`]), and a request to any other host is
//! refused before a byte is sent. An allowed request becomes a [`Call`] whose target is the
//! host (`api.example.com`, or `host:port` off the scheme's port), so it runs through the
//! same policy chain as a mesh call (a `[[bind]]` with `calls_to = "api.example.com"` puts a
//! breaker and retries around a third-party API), with the caller's deadline, trace context
//! and metrics; the innermost layer is an [`ExternalEndpoint`] instead of a routed instance.
//!
//! HTTPS is verified against the system's roots, or only against the CAs of the service's
//! `outbound_ca`. Each request opens its own connection: simple and isolated, not pooled. It
//! speaks HTTP/1.1, or HTTP/2 when TLS's ALPN picks `h2`; a gRPC call (an rpc call with method
//! `GRPC /package.Service/Method`, which is how `switchyard_sdk::grpc::call` reaches a URL)
//! always speaks HTTP/2 (with prior knowledge over plain TCP), and its trailers
//! (`grpc-status`, ...) come back among the reply's headers.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::call::{Call, CallError, CallService, Reply, Target, split_method};
use crate::manifest::OutboundSpec;
use crate::util::BoxFuture;

/// The largest response body taken from a host outside the mesh (as for mesh replies).
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// What one service may reach outside the mesh, and how it trusts it.
pub(crate) struct OutboundHosts {
    spec: OutboundSpec,
    /// Built on the first HTTPS request (reading the CA file or the system's roots); the
    /// manifest check already read the CA file once, so this fails only if it changed since.
    tls: OnceLock<Result<tokio_rustls::TlsConnector, String>>,
}

impl OutboundHosts {
    pub(crate) fn new(spec: OutboundSpec) -> Self {
        Self {
            spec,
            tls: OnceLock::new(),
        }
    }

    /// The endpoint for `scheme://host:port`, or why the manifest does not allow it.
    pub(crate) fn endpoint(
        &self,
        service: &str,
        https: bool,
        host: &str,
        port: u16,
    ) -> Result<ExternalEndpoint, CallError> {
        if !self.spec.allows(https, host, port) {
            let scheme = if https { "https" } else { "http" };
            let listed: Vec<String> = self.spec.hosts.iter().map(ToString::to_string).collect();
            return Err(CallError::Rejected(format!(
                "service `{service}` may not send HTTP to {scheme}://{host}:{port}: its \
                 allowed_outbound_hosts {}; add e.g. \"{scheme}://{host}:{port}\" to it in the \
                 manifest",
                if listed.is_empty() {
                    "is empty".to_owned()
                } else {
                    format!("lists {}", listed.join(", "))
                }
            )));
        }
        let tls = if https {
            let connector = self
                .tls
                .get_or_init(|| tls_connector(&self.spec))
                .clone()
                .map_err(CallError::Unavailable)?;
            Some(connector)
        } else {
            None
        };
        Ok(ExternalEndpoint {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

/// Whether `call` is a gRPC call (`GRPC /package.Service/Method`).
fn is_grpc(call: &Call) -> bool {
    call.method
        .trim_start()
        .strip_prefix(crate::manifest::GRPC_METHOD)
        .is_some_and(|rest| rest.starts_with(' '))
}

/// The HTTPS client settings of a service: its `outbound_ca`, or the system's roots.
fn tls_connector(spec: &OutboundSpec) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &spec.ca {
        Some(ca) => {
            for cert in CertificateDer::pem_file_iter(ca)
                .map_err(|err| format!("outbound_ca {}: {err}", ca.display()))?
            {
                let cert = cert.map_err(|err| format!("outbound_ca {}: {err}", ca.display()))?;
                roots
                    .add(cert)
                    .map_err(|err| format!("outbound_ca {}: {err}", ca.display()))?;
            }
        }
        None => {
            // Unreadable entries of the system's store are skipped, as every client does.
            let native = rustls_native_certs::load_native_certs()
                .map_err(|err| format!("cannot read the system's root certificates: {err}"))?;
            roots.add_parsable_certificates(native);
        }
    }
    if roots.is_empty() {
        return Err(
            "no root certificates to verify HTTPS against (outbound_ca or the \
                    system's store holds none)"
                .into(),
        );
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|err| err.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// One host outside the mesh, as the innermost layer of a call.
pub(crate) struct ExternalEndpoint {
    host: String,
    port: u16,
    /// `Some` for HTTPS.
    tls: Option<tokio_rustls::TlsConnector>,
}

impl CallService for ExternalEndpoint {
    fn call(&self, call: Call) -> BoxFuture<'_, Result<Reply, CallError>> {
        Box::pin(async move {
            let budget = call.deadline.remaining();
            tokio::time::timeout(budget, self.send(call))
                .await
                .unwrap_or(Err(CallError::Timeout))
        })
    }
}

impl ExternalEndpoint {
    /// The host as a URL names it: with the port only when it is not the scheme's. Also the
    /// call's callee (what `[[bind]] calls_to` and the metrics use).
    fn authority(&self) -> String {
        match (self.tls.is_some(), self.port) {
            (true, 443) | (false, 80) => self.host.clone(),
            _ => format!("{}:{}", self.host, self.port),
        }
    }

    /// The call's target: the host, by [`ExternalEndpoint::authority`], any version.
    pub(crate) fn target(&self) -> Target {
        Target {
            service: self.authority(),
            range: None,
        }
    }

    async fn send(&self, call: Call) -> Result<Reply, CallError> {
        let (host, port) = (self.host.as_str(), self.port);
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|err| {
                CallError::Unavailable(format!("cannot connect to {host}:{port}: {err}"))
            })?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => {
                let http2 = is_grpc(&call);
                self.exchange(tcp, call, http2).await
            }
            Some(connector) => {
                let name = ServerName::try_from(host.to_owned()).map_err(|err| {
                    CallError::BadRequest(format!("`{host}` is not a TLS server name: {err}"))
                })?;
                let tls = connector.connect(name, tcp).await.map_err(|err| {
                    CallError::Unavailable(format!("TLS with {host}:{port} failed: {err}"))
                })?;
                let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                if is_grpc(&call) && !http2 {
                    return Err(CallError::Unavailable(format!(
                        "{host}:{port} did not agree to HTTP/2 (ALPN h2), which gRPC needs"
                    )));
                }
                self.exchange(tls, call, http2).await
            }
        }
    }

    async fn exchange<Io>(&self, io: Io, call: Call, http2: bool) -> Result<Reply, CallError>
    where
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let unavailable = |what: &str, err: hyper::Error| {
            CallError::Unavailable(format!("{what} {}:{}: {err}", self.host, self.port))
        };
        let (verb, path, query) = split_method(&call.method)?;
        let grpc = verb == crate::manifest::GRPC_METHOD;
        let target = match query {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        };
        let mut request = http::Request::builder();
        if http2 {
            // HTTP/2 names the host in the URI (`:authority`), not in a Host header.
            let scheme = if self.tls.is_some() { "https" } else { "http" };
            request = request.uri(format!("{scheme}://{}{target}", self.authority()));
        } else {
            request = request
                .uri(target)
                .header(http::header::HOST, self.authority());
        }
        request = request.method(if grpc { "POST" } else { verb });
        for (name, value) in &call.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if grpc {
            request = request
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .header(http::header::TE, "trailers");
            // grpc-timeout: what is left of the caller's deadline, in milliseconds.
            let left = call.deadline.remaining().as_millis().min(99_999_999);
            request = request.header("grpc-timeout", format!("{left}m"));
        }
        let request = request
            .body(Full::new(Bytes::from(call.body)))
            .map_err(|err| CallError::BadRequest(format!("cannot send this request: {err}")))?;
        let response = if http2 {
            let (mut sender, connection) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                TokioIo::new(io),
            )
            .await
            .map_err(|err| unavailable("cannot speak HTTP/2 with", err))?;
            // The connection runs beside the exchange and ends with it (the sender is dropped).
            tokio::spawn(connection);
            sender.send_request(request).await
        } else {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .map_err(|err| unavailable("cannot speak HTTP/1.1 with", err))?;
            tokio::spawn(connection);
            sender.send_request(request).await
        }
        .map_err(|err| unavailable("no answer from", err))?;
        let (parts, body) = response.into_parts();
        let collected = http_body_util::Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|err| {
                CallError::Remote(format!(
                    "the answer of {}:{} could not be read (at most {MAX_RESPONSE_BYTES} bytes \
                     are taken): {err}",
                    self.host, self.port
                ))
            })?;
        // A gRPC answer's status is in its trailers; the reply carries them as headers.
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let body = collected.to_bytes().to_vec();
        let headers = parts
            .headers
            .iter()
            .chain(trailers.iter())
            .filter(|(name, _)| !super::http::is_hop_by_hop(name.as_str()))
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect();
        let reply = Reply {
            status: parts.status.as_u16(),
            headers,
            body,
        };
        Ok(if grpc { reply.judged_as_grpc() } else { reply })
    }
}
