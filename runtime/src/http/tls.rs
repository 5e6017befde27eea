//! TLS at the ingress (`[node] http_tls`): the certificate the node presents to HTTP clients,
//! swapped in place when its files change, and the client certificates it asks for when
//! `client_ca` is set.
//!
//! ALPN offers `h2` first and `http/1.1` second, so a gRPC client gets HTTP/2 and a browser or
//! `curl --http1.1` the protocol it asks for. A connection keeps the certificate it shook hands
//! with; the next handshake presents the new one, and checks client certificates against the
//! `client_ca` file as it is then (it is reloaded with the pair), and names those CAs to the
//! client (the `certificate_authorities` of its certificate request), so that a client with
//! several certificates offers one they issued.
//!
//! A verified client certificate is the request's client identity: the guest finds it in the
//! `x-switchyard-client-cert` header (see [`client_identity`]), which no client can set.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;

use super::server::ServerTls;
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

/// The certificate the ingress presents, and the client CAs it checks; [`EdgeCert::reload`]
/// swaps them.
pub(crate) struct EdgeCert {
    key: Arc<EdgeKey>,
    client_ca: Option<PathBuf>,
    /// What the ingress accepts connections with: rebuilt whole when the client CAs change,
    /// as rustls sends their names from the config a handshake starts with.
    accepting: Arc<ServerTls>,
}

/// How many TLS sessions the ingress keeps for resumption (rustls's default).
const SESSIONS_KEPT: usize = 256;

/// The certificate and key the ingress presents, swapped in place.
#[derive(Debug)]
struct EdgeKey {
    current: ArcSwap<CertifiedKey>,
}

impl rustls::server::ResolvesServerCert for EdgeKey {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl std::fmt::Debug for EdgeCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeCert").finish_non_exhaustive()
    }
}

impl EdgeCert {
    /// Replaces the certificate with the one in `cert` and `key`, once the key is checked to
    /// match it, and the client CAs with the `client_ca` file as it is now; on an error the
    /// old ones stay.
    pub(crate) fn reload(&self, cert: &Path, key: &Path) -> Result<(), EdgeTlsError> {
        let certified = certified_key(cert, key)?;
        // Both are checked before either is swapped: a bad CA file keeps the old pair too.
        let verifier = self.client_ca.as_deref().map(client_verifier).transpose()?;
        if let Some(verifier) = verifier {
            // The new config comes with an empty session cache: a resumed session skips the
            // client certificate check, so clients of the old CAs shake hands with the new.
            self.accepting
                .replace(server_config(self.key.clone(), Some(verifier))?);
        }
        self.key.current.store(Arc::new(certified));
        Ok(())
    }

    /// What the ingress's listener accepts connections with.
    pub(crate) fn accepting(&self) -> Arc<ServerTls> {
        self.accepting.clone()
    }

    /// The client CA file, watched beside the pair.
    pub(crate) fn client_ca_file(&self) -> Option<&Path> {
        self.client_ca.as_deref()
    }
}

/// A verifier of client certificates issued by the CAs in `ca`.
fn client_verifier(ca: &Path) -> Result<Arc<dyn ClientCertVerifier>, EdgeTlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for der in certificates(ca, "a PEM file of CA certificates")? {
        roots.add(der).map_err(|err| EdgeTlsError::Pem {
            path: ca.to_owned(),
            what: "a CA certificate rustls accepts",
            reason: err.to_string(),
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
        .build()
        .map_err(|err| EdgeTlsError::Config(format!("client_ca {}: {err}", ca.display())))
}

/// The request header that carries the client's verified certificate to the guest (a node
/// header: one a client sends is dropped).
pub(crate) const CLIENT_CERT_HEADER: &str = "x-switchyard-client-cert";

/// What the guest learns of a verified client certificate, in the form Envoy's
/// `x-forwarded-client-cert` uses: `Subject="CN=app,O=shop";DNS=app.example;URI=spiffe://...`
/// (a quote or backslash in the subject is escaped with a backslash).
pub(crate) fn client_identity(leaf: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let subject = parsed
        .subject()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    let mut identity = format!("Subject=\"{subject}\"");
    if let Ok(Some(names)) = parsed.subject_alternative_name() {
        for name in &names.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => {
                    identity.push_str(&format!(";DNS={dns}"));
                }
                x509_parser::extensions::GeneralName::URI(uri) => {
                    identity.push_str(&format!(";URI={uri}"));
                }
                _ => {}
            }
        }
    }
    Some(identity)
}

/// The ingress's TLS config: `verifier` checks client certificates (and names their CAs to
/// the client), if any.
fn server_config(
    key: Arc<EdgeKey>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<rustls::ServerConfig, EdgeTlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| EdgeTlsError::Config(err.to_string()))?;
    let builder = match verifier {
        None => builder.with_no_client_auth(),
        Some(verifier) => builder.with_client_cert_verifier(verifier),
    };
    let mut config = builder.with_cert_resolver(key);
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSIONS_KEPT);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The ingress's TLS: what it accepts connections with ([`EdgeCert::accepting`]) and presents.
pub(crate) fn edge_tls(spec: &HttpTlsSpec) -> Result<Arc<EdgeCert>, EdgeTlsError> {
    let verifier = spec.client_ca.as_deref().map(client_verifier).transpose()?;
    let key = Arc::new(EdgeKey {
        current: ArcSwap::from_pointee(certified_key(&spec.cert, &spec.key)?),
    });
    Ok(Arc::new(EdgeCert {
        accepting: ServerTls::new(server_config(key.clone(), verifier)?),
        key,
        client_ca: spec.client_ca.clone(),
    }))
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

        let presented = edge_tls(&HttpTlsSpec { key, ..spec }).unwrap();
        let before = presented.key.current.load_full();
        assert!(presented.reload(&cert, &other_key).is_err());
        assert!(Arc::ptr_eq(&before, &presented.key.current.load_full()));
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
