//! The client half of etcd's v3 JSON gateway: connections (plain or TLS, checked against the
//! CA of `[node.discovery] tls`) and one POST at a time on them. The session logic that uses
//! it is in the parent module.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

use super::EtcdError;
use crate::manifest::EtcdTlsSpec;

/// Reads the files `tls` names into a connector for etcd's https endpoints.
pub(crate) fn connector(tls: &EtcdTlsSpec) -> Result<TlsConnector, EtcdError> {
    let fail = |what: &'static str, path: &std::path::Path, reason: String| EtcdError::Tls {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&tls.ca)
        .map_err(|err| fail("cannot read the CA", &tls.ca, err.to_string()))?
    {
        let cert = cert.map_err(|err| fail("cannot read the CA", &tls.ca, err.to_string()))?;
        roots
            .add(cert)
            .map_err(|err| fail("unusable CA certificate in", &tls.ca, err.to_string()))?;
    }
    if roots.is_empty() {
        return Err(fail(
            "no certificate in the CA file",
            &tls.ca,
            "expected PEM `-----BEGIN CERTIFICATE-----` blocks".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| fail("no TLS versions for", &tls.ca, err.to_string()))?
        .with_root_certificates(roots);
    let mut config = match &tls.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|err| fail("cannot read the client certificate", cert, err.to_string()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|err| fail("cannot read the client key", key, err.to_string()))?;
            builder.with_client_auth_cert(chain, key).map_err(|err| {
                fail(
                    "the client certificate does not fit its key",
                    cert,
                    err.to_string(),
                )
            })?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

fn unreachable(endpoint: &str, reason: String) -> EtcdError {
    EtcdError::Unreachable {
        endpoint: endpoint.to_owned(),
        reason,
    }
}

/// The sending half of an HTTP/1.1 connection to etcd.
pub(super) type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A new connection to `endpoint` (TLS with `tls`).
pub(super) async fn connect(
    endpoint: &str,
    tls: Option<&TlsConnector>,
) -> Result<Sender, EtcdError> {
    let stream = tokio::net::TcpStream::connect(endpoint)
        .await
        .map_err(|err| unreachable(endpoint, err.to_string()))?;
    let Some(tls) = tls else {
        return handshake(stream, endpoint).await;
    };
    // The certificate must name the host as written in the endpoint (`[v6]` without brackets).
    let host = endpoint
        .rsplit_once(':')
        .map_or(endpoint, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = ServerName::try_from(host.to_owned()).map_err(|err| {
        unreachable(
            endpoint,
            format!("`{host}` is not a name to check a certificate against: {err}"),
        )
    })?;
    let stream = tls
        .connect(name, stream)
        .await
        .map_err(|err| unreachable(endpoint, format!("TLS handshake failed: {err}")))?;
    handshake(stream, endpoint).await
}

/// HTTP/1.1 on `io`; the connection runs in a task of its own until either side drops it.
async fn handshake<IO>(io: IO, endpoint: &str) -> Result<Sender, EtcdError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|err| unreachable(endpoint, err.to_string()))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// POSTs `body` to `path` on `sender`'s connection once it can take a request.
pub(super) async fn request(
    sender: &mut Sender,
    endpoint: &str,
    path: &'static str,
    body: &Value,
) -> Result<hyper::Response<Incoming>, EtcdError> {
    sender
        .ready()
        .await
        .map_err(|err| unreachable(endpoint, err.to_string()))?;
    let request = hyper::Request::post(path)
        .header(hyper::header::HOST, endpoint)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|err| unreachable(endpoint, err.to_string()))?;
    sender
        .send_request(request)
        .await
        .map_err(|err| unreachable(endpoint, err.to_string()))
}
