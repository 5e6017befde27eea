//! TLS at the ingress (`[node] http_tls`): the certificate the node presents to HTTP clients,
//! swapped in place when its files change, and the client certificates it asks for when
//! `client_ca` is set.
//!
//! ALPN offers `h2` first and `http/1.1` second, so a gRPC client gets HTTP/2 and a browser or
//! `curl --http1.1` the protocol it asks for. A connection keeps the certificate it shook hands
//! with; the next handshake presents the new one, and checks client certificates against the
//! `client_ca` file as it is then (it is reloaded with the pair). Hints of acceptable client
//! CAs are not sent (the CA list can change under a running config): a client offers the one
//! certificate it has.
//!
//! A verified client certificate is the request's client identity: the guest finds it in the
//! `x-switchyard-client-cert` header (see [`client_identity`]), which no client can set.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

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
    current: ArcSwap<CertifiedKey>,
    client_cas: Option<(PathBuf, Arc<ClientCas>)>,
    sessions: Arc<Sessions>,
}

/// How many TLS sessions the ingress keeps for resumption (rustls's default).
const SESSIONS_KEPT: usize = 256;

/// The ingress's resumable TLS sessions, forgotten at once when the client CAs change.
#[derive(Debug)]
struct Sessions {
    current: ArcSwap<Arc<rustls::server::ServerSessionMemoryCache>>,
}

impl Sessions {
    fn new() -> Self {
        Self {
            current: ArcSwap::from_pointee(Self::empty()),
        }
    }

    fn forget_all(&self) {
        self.current.store(Arc::new(Self::empty()));
    }

    fn empty() -> Arc<rustls::server::ServerSessionMemoryCache> {
        rustls::server::ServerSessionMemoryCache::new(SESSIONS_KEPT)
    }
}

impl rustls::server::StoresServerSessions for Sessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.current.load().put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.current.load().get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.current.load().take(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
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
        let certified = certified_key(cert, key)?;
        // Both are checked before either is swapped: a bad CA file keeps the old pair too.
        let verifier = self
            .client_cas
            .as_ref()
            .map(|(path, cas)| Ok::<_, EdgeTlsError>((cas, client_verifier(path)?)))
            .transpose()?;
        if let Some((cas, verifier)) = verifier {
            cas.current.store(Arc::new(verifier));
            // A resumed session skips the client certificate check: forget every session
            // made under the old CAs, so their clients shake hands with the new ones.
            self.sessions.forget_all();
        }
        self.current.store(Arc::new(certified));
        Ok(())
    }

    /// The client CA file, watched beside the pair.
    pub(crate) fn client_ca_file(&self) -> Option<&Path> {
        self.client_cas.as_ref().map(|(path, _)| path.as_path())
    }
}

/// Checks client certificates against the CAs of the `client_ca` file as last loaded.
#[derive(Debug)]
pub(crate) struct ClientCas {
    current: ArcSwap<Arc<dyn ClientCertVerifier>>,
}

impl ClientCertVerifier for ClientCas {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current
            .load()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current
            .load()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current
            .load()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current.load().supported_verify_schemes()
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
    let client_cas = match &spec.client_ca {
        Some(ca) => Some((
            ca.clone(),
            Arc::new(ClientCas {
                current: ArcSwap::from_pointee(client_verifier(ca)?),
            }),
        )),
        None => None,
    };
    let cert = Arc::new(EdgeCert {
        current: ArcSwap::from_pointee(certified_key(&spec.cert, &spec.key)?),
        client_cas,
        sessions: Arc::new(Sessions::new()),
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| EdgeTlsError::Config(err.to_string()))?;
    let builder = match &cert.client_cas {
        None => builder.with_no_client_auth(),
        Some((_, cas)) => builder.with_client_cert_verifier(cas.clone()),
    };
    let mut config = builder.with_cert_resolver(cert.clone());
    config.session_storage = cert.sessions.clone();
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
