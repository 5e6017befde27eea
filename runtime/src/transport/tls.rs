//! Certificates and TLS configuration: mutual TLS 1.3 where a peer is accepted only if its
//! certificate chains to the cluster CA.
//!
//! Every node certificate carries the DNS name [`SERVER_NAME`], so a node dials peers by
//! address and checks "signed by our CA" rather than a per-host name: membership of the
//! cluster is having a certificate from its CA.

#![cfg_attr(
    not(feature = "bench"),
    allow(
        unreachable_pub,
        reason = "`Identity` is public only for the benchmarks (feature `bench`)"
    )
)]

use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::TransportError;

/// The name every node certificate is issued for and every node checks.
pub const SERVER_NAME: &str = "switchyard.node";
const ALPN: &[u8] = b"switchyard/1";

/// The built-in development CA. Its key is public (it is in the source), so it proves
/// nothing: the node uses it only when every address it listens on is loopback, and says so.
const DEV_CA_CERT: &str = include_str!("dev-ca-INSECURE.pem");
const DEV_CA_KEY: &str = include_str!("dev-ca-INSECURE.key");

/// A node's TLS identity: the CA it trusts, and its own chain and key.
pub struct Identity {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
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
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|err| {
                TransportError::Tls(format!("cannot read {}: {err}", path.display()))
            })
        };
        Self::from_pem(
            &read(ca)?,
            &CertPem {
                cert: read(cert)?,
                key: read(key)?,
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
        let chain = CertificateDer::pem_slice_iter(node.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("the node certificate", e))?;
        let key = PrivateKeyDer::from_pem_slice(node.key.as_bytes())
            .map_err(|e| bad("the node key", e))?;
        Ok(Self { ca, chain, key })
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
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca.clone())
            .map_err(|err| TransportError::Tls(format!("the CA certificate is unusable: {err}")))?;
        Ok(roots)
    }

    /// QUIC's TLS for accepting peers: requires a client certificate from the same CA.
    pub(super) fn server_crypto(
        &self,
    ) -> Result<quinn::crypto::rustls::QuicServerConfig, TransportError> {
        let tls = |err: rustls::Error| TransportError::Tls(err.to_string());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()?),
            provider.clone(),
        )
        .build()
        .map_err(|err| TransportError::Tls(err.to_string()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(tls)?;
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
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(tls)?;
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
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(tls)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        quinn::crypto::rustls::QuicClientConfig::try_from(config)
            .map_err(|err| TransportError::Tls(err.to_string()))
    }
}
