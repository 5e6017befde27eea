//! TLS at the ingress (`[node] http_tls`): the certificate the node presents to HTTP clients,
//! swapped in place when its files change, and the client certificates it asks for when
//! `client_ca` is set.
//!
//! ALPN offers `h2` first and `http/1.1` second, so a gRPC client gets HTTP/2 and a browser or
//! `curl --http1.1` the protocol it asks for. A connection keeps the certificate it shook hands
//! with; the next handshake presents the new one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::sign::CertifiedKey;

use crate::manifest::HttpTlsSpec;

/// Why the ingress's TLS could not be set up or reloaded.
#[derive(Debug, thiserror::Error)]
pub enum EdgeTlsError {
    /// A file could not be read.
    #[error("cannot read {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// A file is not the PEM it should be.
    #[error("{} is not {what}: {reason}", path.display())]
    Pem {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    /// The key is not the one the certificate was issued for.
    #[error(
        "the key in {} does not match the certificate in {}\n  hint: give the key the \
         certificate was issued for (compare `openssl x509 -noout -pubkey -in <cert>` with \
         `openssl pkey -pubout -in <key>`)", key.display(), cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// rustls refused the certificate, key or client CA.
    #[error("`node.http_tls`: {0}")]
    Config(String),
}

/// The certificate the ingress presents; [`EdgeCert::reload`] swaps it.
pub(crate) struct EdgeCert {
    current: ArcSwap<CertifiedKey>,
}

impl std::fmt::Debug for EdgeCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeCert").finish_non_exhaustive()
    }
}

impl EdgeCert {
    /// Replaces the certificate with the one in `cert` and `key`, once the key is checked to
    /// match it; on an error the old one stays.
    pub(crate) fn reload(&self, cert: &Path, key: &Path) -> Result<(), EdgeTlsError> {
        self.current.store(Arc::new(certified_key(cert, key)?));
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for EdgeCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The acceptor for the ingress's connections, and the certificate it presents (to reload).
pub(crate) fn edge_tls(
    spec: &HttpTlsSpec,
) -> Result<(tokio_rustls::TlsAcceptor, Arc<EdgeCert>), EdgeTlsError> {
    let cert = Arc::new(EdgeCert {
        current: ArcSwap::from_pointee(certified_key(&spec.cert, &spec.key)?),
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| EdgeTlsError::Config(err.to_string()))?;
    let builder = match &spec.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for der in certificates(ca, "a PEM file of CA certificates")? {
                roots.add(der).map_err(|err| EdgeTlsError::Pem {
                    path: ca.clone(),
                    what: "a CA certificate rustls accepts",
                    reason: err.to_string(),
                })?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|err| EdgeTlsError::Config(format!("client_ca: {err}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(cert.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(config)), cert))
}

fn read(path: &Path) -> Result<Vec<u8>, EdgeTlsError> {
    std::fs::read(path).map_err(|cause| EdgeTlsError::Read {
        path: path.to_owned(),
        cause,
    })
}

fn certificates(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, EdgeTlsError> {
    let pem = |reason: String| EdgeTlsError::Pem {
        path: path.to_owned(),
        what,
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| pem(err.to_string()))?;
    if chain.is_empty() {
        return Err(pem("it holds no CERTIFICATE block".to_owned()));
    }
    Ok(chain)
}

/// The chain in `cert` with the key in `key`, checked to belong together.
fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, EdgeTlsError> {
    let chain = certificates(cert, "a PEM certificate chain")?;
    let private = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|err| EdgeTlsError::Pem {
        path: key.to_owned(),
        what: "a PEM private key",
        reason: err.to_string(),
    })?;
    CertifiedKey::from_der(chain, private, &rustls::crypto::ring::default_provider()).map_err(
        |err| match err {
            rustls::Error::InconsistentKeys(_) => EdgeTlsError::KeyMismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
            },
            other => EdgeTlsError::Config(format!(
                "{} with {}: {other}",
                cert.display(),
                key.display()
            )),
        },
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;

    fn issue(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    #[test]
    fn a_key_of_another_certificate_is_named_as_a_mismatch_and_the_old_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = issue(dir.path(), "edge");
        let (_, other_key) = issue(dir.path(), "other");
        let spec = HttpTlsSpec {
            cert: cert.clone(),
            key: other_key.clone(),
            client_ca: None,
        };
        let Err(error) = edge_tls(&spec) else {
            panic!("a key of another certificate was taken")
        };
        assert!(matches!(error, EdgeTlsError::KeyMismatch { .. }), "{error}");
        let text = error.to_string();
        assert!(
            text.contains("other.key") && text.contains("edge.pem"),
            "{text}"
        );

        let (_, presented) = edge_tls(&HttpTlsSpec { key, ..spec }).unwrap();
        let before = presented.current.load_full();
        assert!(presented.reload(&cert, &other_key).is_err());
        assert!(Arc::ptr_eq(&before, &presented.current.load_full()));
    }

    #[test]
    fn a_file_without_a_certificate_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let (_, key) = issue(dir.path(), "edge");
        let Err(error) = edge_tls(&HttpTlsSpec {
            cert: key.clone(),
            key,
            client_ca: None,
        }) else {
            panic!("a key file was taken as a certificate")
        };
        assert!(error.to_string().contains("edge.key"), "{error}");
    }
}
