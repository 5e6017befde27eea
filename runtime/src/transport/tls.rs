//! Certificates and TLS configuration: mutual TLS 1.3 where a peer is accepted only if its
//! certificate chains to the cluster CA.
//!
//! Every node certificate carries the DNS name [`SERVER_NAME`], so a node dials peers by
//! address and checks "signed by our CA" rather than a per-host name: membership of the
//! cluster is having a certificate from its CA. Its subject's common name is the node's name
//! ([`node_name`]): a node is its certificate. What a peer says about itself (its address,
//! its services, its goodbye) is believed when it comes with a [`Proof`] made by
//! [`NodeCert::sign`], checked by [`NodeCert::check`]: a signature by the key of a certificate
//! of this cluster that names the node the words are about.

#![cfg_attr(
    not(feature = "bench"),
    allow(
        unreachable_pub,
        reason = "`Identity` is public only for the benchmarks (feature `bench`)"
    )
)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::TransportError;
pub(crate) use crate::wire::frame::Proof;

/// The name every node certificate is issued for and every node checks.
pub const SERVER_NAME: &str = "switchyard.node";
const ALPN: &[u8] = b"switchyard/1";

/// The built-in development CA. Its key is public (it is in the source), so it proves
/// nothing: the node uses it only when every address it listens on is loopback, and says so.
const DEV_CA_CERT: &str = include_str!("dev-ca-INSECURE.pem");
const DEV_CA_KEY: &str = include_str!("dev-ca-INSECURE.key");

/// A node's TLS identity: the CA it trusts, and its own chain and key.
pub struct Identity {
    /// Its certificate, and the CA it trusts.
    node: Arc<NodeCert>,
}

/// This node's certificate and key as every TLS handshake (QUIC both ways, the admin API)
/// presents them: replaceable while connections run, so a renewed certificate is used from
/// the next handshake on, without a restart.
pub(crate) struct NodeCert {
    current: arc_swap::ArcSwap<rustls::sign::CertifiedKey>,
    /// The cluster CA, which a replacement must chain to.
    ca: CertificateDer<'static>,
    /// The node the certificate names; a replacement must name the same one.
    name: String,
    /// Checks that a peer's certificate chains to the CA, for [`NodeCert::check`].
    peers: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    /// The signature schemes this node signs and checks words with (the provider's), taken
    /// once rather than per record.
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
    schemes: Vec<rustls::SignatureScheme>,
    /// Peer certificates checked lately, with the node each names: a peer's chain is checked
    /// once per [`CHAIN_RECHECK`], its signatures every time.
    checked: Mutex<HashMap<CertificateDer<'static>, (String, Instant)>>,
}

/// How long a checked peer certificate is taken without checking its chain again (its
/// validity is what can change).
const CHAIN_RECHECK: Duration = Duration::from_secs(60);
/// Peer certificates remembered as checked at most; the cache starts over past it.
const MAX_CHECKED: usize = 4096;

/// The node a certificate was issued to: its subject's common name, as `switchyard cert node
/// <name>` writes it.
pub(crate) fn node_name(cert: &CertificateDer<'_>) -> Result<String, TransportError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|err| TransportError::Tls(format!("a node certificate does not parse: {err}")))?;
    parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|name| name.as_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| {
            TransportError::Tls(
                "a node certificate names no node (no common name); issue it with \
                 `switchyard cert node <name>`"
                    .into(),
            )
        })
}

/// What a signature covers: the words and what they are for, so words signed for one
/// purpose never pass for another.
fn signed_message(purpose: &str, words: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(purpose.len() + 1 + words.len());
    message.extend_from_slice(purpose.as_bytes());
    message.push(0);
    message.extend_from_slice(words);
    message
}

impl std::fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCert").finish_non_exhaustive()
    }
}

impl NodeCert {
    /// Replaces the certificate with the one in `cert` and `key` (PEM files), once it is
    /// checked: the key matches it, it chains to the cluster CA, it is valid now and names
    /// [`SERVER_NAME`]. On an error the old one stays.
    pub(crate) fn reload(&self, cert: &Path, key: &Path) -> Result<(), TransportError> {
        let node = CertPem {
            cert: read_pem(cert)?,
            key: read_pem(key)?,
        };
        let certified = certified_key(&node)?;
        if let Some(leaf) = certified.cert.first() {
            let named = node_name(leaf)?;
            if named != self.name {
                return Err(TransportError::Tls(format!(
                    "{} is a certificate for node `{named}`, this node is `{}`",
                    cert.display(),
                    self.name
                )));
            }
        }
        let roots = roots(&self.ca)?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|err| TransportError::Tls(err.to_string()))?;
        let (end_entity, intermediates) = certified.cert.split_first().ok_or_else(|| {
            TransportError::Tls(format!("{} holds no certificate", cert.display()))
        })?;
        let name = rustls::pki_types::ServerName::try_from(SERVER_NAME)
            .map_err(|err| TransportError::Tls(err.to_string()))?;
        rustls::client::danger::ServerCertVerifier::verify_server_cert(
            &*verifier,
            end_entity,
            intermediates,
            &name,
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .map_err(|err| {
            TransportError::Tls(format!(
                "{} is not a node certificate of this cluster's CA that is valid now: {err}",
                cert.display()
            ))
        })?;
        self.current.store(Arc::new(certified));
        Ok(())
    }

    fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        self.current.load_full()
    }

    /// The node this certificate names.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Signs `words` for `purpose` with this node's key, with the chain that proves whose
    /// key it is.
    pub(crate) fn sign(&self, purpose: &str, words: &[u8]) -> Result<Proof, TransportError> {
        let current = self.current();
        let signer = current.key.choose_scheme(&self.schemes).ok_or_else(|| {
            TransportError::Tls("the node key fits no signature scheme this node knows".into())
        })?;
        let signature = signer
            .sign(&signed_message(purpose, words))
            .map_err(|err| TransportError::Tls(format!("signing: {err}")))?;
        Ok(Proof {
            scheme: u16::from(signer.scheme()),
            signature,
            chain: current.cert.iter().map(|cert| cert.to_vec()).collect(),
        })
    }

    /// Checks that `proof` signs `words` for `purpose` with the key of a certificate that
    /// chains to this cluster's CA and is valid now; returns the node that certificate names.
    pub(crate) fn check(
        &self,
        purpose: &str,
        words: &[u8],
        proof: &Proof,
    ) -> Result<String, TransportError> {
        let bad = |why: String| TransportError::Tls(format!("a signed record: {why}"));
        let (leaf, intermediates) = proof
            .chain
            .split_first()
            .ok_or_else(|| bad("it carries no certificate".into()))?;
        let leaf = CertificateDer::from(leaf.clone());
        let name = self.check_chain(&leaf, intermediates)?;
        let scheme = rustls::SignatureScheme::from(proof.scheme);
        let algorithms = self
            .algorithms
            .mapping
            .iter()
            .find(|(known, _)| *known == scheme)
            .map(|(_, algorithms)| *algorithms)
            .ok_or_else(|| {
                bad(format!(
                    "signature scheme {scheme:?} is not one this node takes"
                ))
            })?;
        let end_entity = webpki::EndEntityCert::try_from(&leaf)
            .map_err(|err| bad(format!("the certificate does not parse: {err}")))?;
        let message = signed_message(purpose, words);
        algorithms
            .iter()
            .find(|algorithm| {
                end_entity
                    .verify_signature(**algorithm, &message, &proof.signature)
                    .is_ok()
            })
            .map(|_| name)
            .ok_or_else(|| bad("the signature does not match its words and certificate".into()))
    }

    /// The node `leaf` names, once it (with `intermediates`) chains to the CA and is valid now.
    fn check_chain(
        &self,
        leaf: &CertificateDer<'static>,
        intermediates: &[Vec<u8>],
    ) -> Result<String, TransportError> {
        let now = Instant::now();
        if let Ok(checked) = self.checked.lock()
            && let Some((name, at)) = checked.get(leaf)
            && now.duration_since(*at) < CHAIN_RECHECK
        {
            return Ok(name.clone());
        }
        let intermediates: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .map(|cert| CertificateDer::from(cert.as_slice()))
            .collect();
        self.peers
            .verify_client_cert(leaf, &intermediates, rustls::pki_types::UnixTime::now())
            .map_err(|err| {
                TransportError::Tls(format!(
                    "a signed record's certificate is not one of this cluster valid now: {err}"
                ))
            })?;
        let name = node_name(leaf)?;
        if let Ok(mut checked) = self.checked.lock() {
            if checked.len() >= MAX_CHECKED {
                checked.clear();
            }
            checked.insert(leaf.clone(), (name.clone(), now));
        }
        Ok(name)
    }
}

impl rustls::server::ResolvesServerCert for NodeCert {
    fn resolve(
        &self,
        _client_hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for NodeCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn read_pem(path: &Path) -> Result<String, TransportError> {
    std::fs::read_to_string(path)
        .map_err(|err| TransportError::Tls(format!("cannot read {}: {err}", path.display())))
}

/// A node's chain and key, parsed, with the key checked against the certificate.
fn certified_key(node: &CertPem) -> Result<rustls::sign::CertifiedKey, TransportError> {
    let bad = |what: &str, err: rustls::pki_types::pem::Error| {
        TransportError::Tls(format!("{what} is not valid PEM: {err}"))
    };
    let chain = CertificateDer::pem_slice_iter(node.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("the node certificate", e))?;
    let key =
        PrivateKeyDer::from_pem_slice(node.key.as_bytes()).map_err(|e| bad("the node key", e))?;
    rustls::sign::CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
        .map_err(|err| TransportError::Tls(format!("the node certificate and key: {err}")))
}

fn roots(ca: &CertificateDer<'static>) -> Result<rustls::RootCertStore, TransportError> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca.clone())
        .map_err(|err| TransportError::Tls(format!("the CA certificate is unusable: {err}")))?;
    Ok(roots)
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

/// PEM text of a certificate and its private key.
#[derive(Debug, Clone)]
pub struct CertPem {
    pub cert: String,
    pub key: String,
}

fn tls_error(what: &str) -> impl Fn(rcgen::Error) -> TransportError + '_ {
    move |err| TransportError::Tls(format!("{what}: {err}"))
}

/// Days a cluster CA is valid by default: rotating a CA means restarting every node.
pub const CA_DAYS: u32 = 3650;
/// Days a node certificate is valid by default.
pub const NODE_DAYS: u32 = 365;

/// A certificate valid from an hour ago (clocks differ a little) for `days` days.
fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// A new cluster CA, valid for [`CA_DAYS`].
pub fn generate_ca(name: &str) -> Result<CertPem, TransportError> {
    generate_ca_for(name, CA_DAYS)
}

/// A new cluster CA, valid for `days` days.
pub fn generate_ca_for(name: &str, days: u32) -> Result<CertPem, TransportError> {
    let key = KeyPair::generate().map_err(tls_error("generating the CA key"))?;
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(tls_error("CA parameters"))?;
    params.distinguished_name.push(
        DnType::CommonName,
        format!("{name} (Switchyard cluster CA)"),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    validity(&mut params, days);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params
        .self_signed(&key)
        .map_err(tls_error("signing the CA"))?;
    Ok(CertPem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A certificate for node `name`, signed by the CA in `ca`, valid for [`NODE_DAYS`].
pub fn issue_node_cert(ca: &CertPem, name: &str) -> Result<CertPem, TransportError> {
    issue_node_cert_for(ca, name, NODE_DAYS)
}

/// A certificate for node `name`, signed by the CA in `ca`, valid for `days` days.
pub fn issue_node_cert_for(ca: &CertPem, name: &str, days: u32) -> Result<CertPem, TransportError> {
    let ca_key = KeyPair::from_pem(&ca.key).map_err(tls_error("reading the CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)
        .map_err(tls_error("reading the CA certificate"))?;
    let key = KeyPair::generate().map_err(tls_error("generating the node key"))?;
    let mut params = CertificateParams::new(vec![SERVER_NAME.to_owned()])
        .map_err(tls_error("node certificate parameters"))?;
    params.distinguished_name.push(DnType::CommonName, name);
    validity(&mut params, days);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(tls_error("signing the node certificate"))?;
    Ok(CertPem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

impl Identity {
    /// An identity from PEM files: the CA certificate, this node's certificate and its key.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TransportError> {
        Self::from_pem(
            &read_pem(ca)?,
            &CertPem {
                cert: read_pem(cert)?,
                key: read_pem(key)?,
            },
        )
    }

    /// An identity from PEM text.
    pub fn from_pem(ca: &str, node: &CertPem) -> Result<Self, TransportError> {
        let bad = |what: &str, err: rustls::pki_types::pem::Error| {
            TransportError::Tls(format!("{what} is not valid PEM: {err}"))
        };
        let ca = CertificateDer::from_pem_slice(ca.as_bytes())
            .map_err(|e| bad("the CA certificate", e))?;
        let certified = certified_key(node)?;
        let name = certified
            .cert
            .first()
            .map(node_name)
            .transpose()?
            .ok_or_else(|| TransportError::Tls("the node certificate file holds none".into()))?;
        let peers = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots(&ca)?),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|err| TransportError::Tls(err.to_string()))?;
        let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        let node = Arc::new(NodeCert {
            current: arc_swap::ArcSwap::from_pointee(certified),
            ca,
            name,
            peers,
            algorithms,
            schemes: algorithms.supported_schemes(),
            checked: Mutex::new(HashMap::new()),
        });
        Ok(Self { node })
    }

    /// The certificate its TLS configurations present, to replace it while they run.
    pub(crate) fn node_cert(&self) -> Arc<NodeCert> {
        self.node.clone()
    }

    /// A fresh node certificate from the built-in development CA (loopback only).
    pub fn development(name: &str) -> Result<Self, TransportError> {
        let ca = CertPem {
            cert: DEV_CA_CERT.to_owned(),
            key: DEV_CA_KEY.to_owned(),
        };
        Self::from_pem(DEV_CA_CERT, &issue_node_cert(&ca, name)?)
    }

    fn roots(&self) -> Result<rustls::RootCertStore, TransportError> {
        roots(&self.node.ca)
    }

    /// QUIC's TLS for accepting peers: requires a client certificate from the same CA.
    pub(super) fn server_crypto(
        &self,
    ) -> Result<quinn::crypto::rustls::QuicServerConfig, TransportError> {
        let tls = |err: rustls::Error| TransportError::Tls(err.to_string());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_client_cert_verifier(self.node.peers.clone())
            .with_cert_resolver(self.node.clone());
        config.alpn_protocols = vec![ALPN.to_vec()];
        quinn::crypto::rustls::QuicServerConfig::try_from(config)
            .map_err(|err| TransportError::Tls(err.to_string()))
    }

    /// TLS for the admin API off loopback: this node's certificate, no client certificate
    /// (clients bring the admin token), HTTP/1.1.
    pub(crate) fn https_server(&self) -> Result<rustls::ServerConfig, TransportError> {
        let tls = |err: rustls::Error| TransportError::Tls(err.to_string());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_no_client_auth()
            .with_cert_resolver(self.node.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// QUIC's TLS for dialling peers: presents this identity and trusts only its CA.
    pub(super) fn client_crypto(
        &self,
    ) -> Result<quinn::crypto::rustls::QuicClientConfig, TransportError> {
        let tls = |err: rustls::Error| TransportError::Tls(err.to_string());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_root_certificates(self.roots()?)
            .with_client_cert_resolver(self.node.clone());
        config.alpn_protocols = vec![ALPN.to_vec()];
        quinn::crypto::rustls::QuicClientConfig::try_from(config)
            .map_err(|err| TransportError::Tls(err.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, node: &CertPem) -> (std::path::PathBuf, std::path::PathBuf) {
        let (cert, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, &node.cert).unwrap();
        std::fs::write(&key, &node.key).unwrap();
        (cert, key)
    }

    #[test]
    fn a_renewed_certificate_replaces_the_one_presented_and_a_bad_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = generate_ca("cluster").unwrap();
        let identity = Identity::from_pem(&ca.cert, &issue_node_cert(&ca, "a").unwrap()).unwrap();
        let presented = identity.node_cert();
        let before = presented.current().cert[0].clone();

        let renewed = issue_node_cert(&ca, "a").unwrap();
        let (cert, key) = write(dir.path(), "renewed", &renewed);
        presented.reload(&cert, &key).unwrap();
        let now = presented.current().cert[0].clone();
        assert_ne!(now, before);
        assert_eq!(
            now,
            CertificateDer::from_pem_slice(renewed.cert.as_bytes()).unwrap()
        );

        // Another CA's certificate, and a key that is not the certificate's: refused, and the
        // renewed one stays.
        let other = generate_ca("other").unwrap();
        let (cert, key) = write(
            dir.path(),
            "stranger",
            &issue_node_cert(&other, "a").unwrap(),
        );
        let refused = presented.reload(&cert, &key).unwrap_err().to_string();
        assert!(
            refused.contains("not a node certificate of this cluster's CA"),
            "{refused}"
        );
        let mismatched = CertPem {
            cert: renewed.cert.clone(),
            key: issue_node_cert(&ca, "a").unwrap().key,
        };
        let (cert, key) = write(dir.path(), "mismatched", &mismatched);
        assert!(presented.reload(&cert, &key).is_err());
        assert_eq!(presented.current().cert[0], now);
    }
}
