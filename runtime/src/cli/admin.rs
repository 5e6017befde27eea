//! The admin API as the CLI talks to it: where the node's admin listener is, the token it
//! wants, whether it speaks TLS, and one HTTP request at a time to it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use switchyard::Manifest;

/// The environment variable that holds an admin token, for scripts.
const TOKEN_VARIABLE: &str = "SWITCHYARD_ADMIN_TOKEN";

/// How every command that talks to a running node finds it (beside `--manifest`).
#[derive(clap::Args, Clone, Default)]
pub(crate) struct AdminArgs {
    /// The admin address (default: the manifest's `node.admin`, else 127.0.0.1:9090).
    #[arg(long)]
    pub(crate) admin: Option<SocketAddr>,
    /// A file holding the admin token (default: SWITCHYARD_ADMIN_TOKEN, else the manifest's
    /// `node.admin_token_file`, else `admin.token` in its `data_dir`).
    #[arg(long)]
    pub(crate) token_file: Option<PathBuf>,
    /// Speak TLS to the admin API and trust this CA (default: the manifest's `[node.tls] ca`
    /// when its admin address is off loopback).
    #[arg(long)]
    pub(crate) ca: Option<PathBuf>,
}

/// A running node's admin API, as found from the command line.
pub(crate) struct AdminApi {
    address: SocketAddr,
    token: String,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl AdminApi {
    /// The one rule of every command that talks to a running node: flags first, then the
    /// environment, then the manifest, then the defaults.
    pub(crate) fn find(manifest: Option<&Path>, args: &AdminArgs) -> Result<Self> {
        let manifest = manifest.map(Manifest::load).transpose()?;
        let node = manifest.as_ref().map(|manifest| &manifest.node);
        let address = match (args.admin, node) {
            (Some(admin), _) => admin,
            (None, Some(node)) => node.admin,
            (None, None) => switchyard::manifest::defaults::ADMIN.parse()?,
        };
        let token = match (&args.token_file, std::env::var(TOKEN_VARIABLE), node) {
            (Some(file), _, _) => read_token(file)?,
            (None, Ok(token), _) if !token.trim().is_empty() => token.trim().to_owned(),
            (None, _, Some(node)) => read_token(
                &node
                    .admin_token_file
                    .clone()
                    .unwrap_or_else(|| node.data_dir.join("admin.token")),
            )?,
            (None, _, None) => bail!(
                "the admin API needs its token: pass --manifest <the node's manifest>, \
                 --token-file <file>, or set {TOKEN_VARIABLE}"
            ),
        };
        let ca = match (&args.ca, node) {
            (Some(ca), _) => Some(ca.clone()),
            (None, Some(node)) if !node.admin.ip().is_loopback() => {
                node.tls.as_ref().map(|tls| tls.ca.clone())
            }
            _ => None,
        };
        let tls = ca.map(|ca| tls_connector(&ca)).transpose()?;
        Ok(Self {
            address,
            token,
            tls,
        })
    }

    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }

    pub(crate) async fn get(&self, path: &str) -> Result<serde_json::Value> {
        let (status, body) = self.request(hyper::Method::GET, path, Vec::new()).await?;
        if status != 200 {
            bail!(
                "{}{path} answered {status}: {}",
                self.address,
                body.trim_end()
            );
        }
        serde_json::from_str(&body)
            .with_context(|| format!("{}{path} did not answer JSON", self.address))
    }

    /// GETs `path` and returns the status and the body as text (for what is not JSON).
    pub(crate) async fn get_text(&self, path: &str) -> Result<(u16, String)> {
        self.request(hyper::Method::GET, path, Vec::new()).await
    }

    pub(crate) async fn post(&self, path: &str, body: Vec<u8>) -> Result<(u16, String)> {
        self.request(hyper::Method::POST, path, body).await
    }

    async fn request(
        &self,
        method: hyper::Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, String)> {
        let stream = tokio::net::TcpStream::connect(self.address)
            .await
            .with_context(|| {
                format!(
                    "no node answers on {}: is it running, and is this its admin address?",
                    self.address
                )
            })?;
        // The node checks that Host names the address the connection arrived at.
        let host = stream.peer_addr()?.to_string();
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", host)
            .header("authorization", format!("Bearer {}", self.token))
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
        match &self.tls {
            None => send(stream, request).await,
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from(switchyard::cert::SERVER_NAME)?;
                let stream = connector.connect(name, stream).await.with_context(|| {
                    format!(
                        "TLS with the admin API at {} failed (is it the node signed by this CA?)",
                        self.address
                    )
                })?;
                send(stream, request).await
            }
        }
    }
}

async fn send<I>(
    io: I,
    request: hyper::Request<http_body_util::Full<bytes::Bytes>>,
) -> Result<(u16, String)>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the admin token from {} (the node creates it at its first start; pass \
             --token-file or set {TOKEN_VARIABLE} if it is elsewhere)",
            path.display()
        )
    })?;
    Ok(text.trim().to_owned())
}

/// TLS that trusts only the cluster CA in `ca` (the admin API is served with the node's
/// certificate).
fn tls_connector(ca: &Path) -> Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(ca).with_context(|| format!("cannot read the CA {}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(cert.with_context(|| format!("{} is not PEM certificates", ca.display()))?)
            .with_context(|| format!("{} holds an unusable certificate", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
