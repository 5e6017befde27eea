//! The admin API as the CLI talks to it: where the node's admin listener is, and one HTTP
//! request at a time to it.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use switchyard::Manifest;

/// The admin address given, or the manifest's, or the default: the one rule of every command
/// that talks to a running node.
pub(crate) fn admin_address(
    manifest: Option<PathBuf>,
    admin: Option<SocketAddr>,
) -> Result<SocketAddr> {
    Ok(match (admin, manifest) {
        (Some(admin), _) => admin,
        (None, Some(path)) => Manifest::load(&path)?.node.admin,
        (None, None) => switchyard::manifest::defaults::ADMIN.parse()?,
    })
}

pub(crate) async fn admin_get(admin: SocketAddr, path: &str) -> Result<serde_json::Value> {
    let (_, body) = admin_request(admin, hyper::Method::GET, path, Vec::new()).await?;
    serde_json::from_str(&body).with_context(|| format!("{admin}{path} did not answer JSON"))
}

pub(crate) async fn admin_post(
    admin: SocketAddr,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, String)> {
    admin_request(admin, hyper::Method::POST, path, body).await
}

async fn admin_request(
    admin: SocketAddr,
    method: hyper::Method,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, String)> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| {
            format!("no node answers on {admin}: is it running, and is this its admin address?")
        })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", admin.to_string())
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
