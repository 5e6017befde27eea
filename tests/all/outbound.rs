//! Outgoing HTTP to hosts outside the mesh: only where `allowed_outbound_hosts` says, over
//! TLS verified against the manifest's `outbound_ca` (or the system's roots), and through the
//! same policy chain as a mesh call. The guest is wstd's published proxy example (a Rust HTTP
//! client on `wasi:http/outgoing-handler`); the far side is a local HTTPS server with a test CA.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;

use crate::support::{TestManifest, capture_logs, guest, logs, send, wstd_proxy};

/// An HTTPS server for `localhost`, its certificate signed by a test CA (`ca.pem` in `dir`).
/// `/flaky` answers 503 to every other request (the first included); anything else 200 with
/// what it saw. Counts the requests it gets.
struct PartnerApi {
    addr: SocketAddr,
    requests: Arc<AtomicU32>,
}

impl PartnerApi {
    async fn start(dir: &std::path::Path) -> Self {
        use rcgen::{CertificateParams, Issuer, KeyPair};
        use rustls::pki_types::pem::PemObject;
        let ca = switchyard::cert::generate_ca("partner-test").unwrap();
        std::fs::write(dir.join("ca.pem"), &ca.cert).unwrap();
        let issuer =
            Issuer::from_ca_cert_pem(&ca.cert, KeyPair::from_pem(&ca.key).unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
                .unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU32::new(0));
        let counted = requests.clone();
        let flaky = Arc::new(AtomicU32::new(0));
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, counted, flaky) = (acceptor.clone(), counted.clone(), flaky.clone());
                tokio::spawn(async move {
                    // A client that does not trust the CA fails the handshake: nothing to serve.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let serve = hyper::service::service_fn(move |request| {
                        counted.fetch_add(1, Ordering::SeqCst);
                        // `/flaky` fails its first request, third, ...: one retry mends each.
                        let fail = request.uri().path() == "/flaky"
                            && flaky.fetch_add(1, Ordering::SeqCst) % 2 == 0;
                        async move { Ok::<_, std::convert::Infallible>(answer(&request, fail)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), serve)
                        .await;
                });
            }
        });
        Self { addr, requests }
    }

    fn requests(&self) -> u32 {
        self.requests.load(Ordering::SeqCst)
    }
}

fn answer(
    request: &hyper::Request<hyper::body::Incoming>,
    fail: bool,
) -> hyper::Response<Full<Bytes>> {
    let saw = |name: &str| request.headers().contains_key(name);
    let status = if fail { 503 } else { 200 };
    hyper::Response::builder()
        .status(status)
        .header("x-partner-status", status.to_string())
        .header("x-saw-traceparent", saw("traceparent").to_string())
        .header(
            "x-saw-node-headers",
            request
                .headers()
                .keys()
                .any(|name| name.as_str().starts_with("x-switchyard-"))
                .to_string(),
        )
        .body(Full::new(Bytes::from(format!(
            "partner: {} {} (host {})\n",
            request.method(),
            request.uri(),
            request
                .headers()
                .get("host")
                .and_then(|host| host.to_str().ok())
                .unwrap_or("-")
        ))))
        .unwrap()
}

/// A node whose one service, `name`, is wstd's proxy example sending `/proxy/<rest>` to
/// `target<rest>`, with `extra` manifest lines for it, and `more` manifest sections.
async fn gateway(
    name: &str,
    target: &str,
    extra: &str,
    more: &str,
) -> (TestManifest, switchyard::Node) {
    let manifest = TestManifest::new(&format!("{}{more}", wstd_proxy(name, target, extra)));
    let node = manifest.start().await;
    (manifest, node)
}

#[tokio::test(flavor = "multi_thread")]
async fn outgoing_https_goes_only_where_allowed_verified_and_through_policies() {
    capture_logs();
    let partner_dir = tempfile::tempdir().unwrap();
    let partner = PartnerApi::start(partner_dir.path()).await;
    let port = partner.addr.port();
    let target = format!("https://localhost:{port}/");
    let allowed = format!("allowed_outbound_hosts = [\"https://localhost:{port}\"]");
    let ca = partner_dir.path().join("ca.pem");
    let retry = format!(
        "[[policy]]\nname = \"retry\"\ncomponent = {:?}\n\
         config = {{ max_attempts = \"3\", base_ms = \"10\", budget_ratio = \"0\", budget_cap = \"5\" }}\n\
         [[bind]]\npolicies = [\"retry\"]\ncalls_to = \"localhost:{port}\"\n",
        guest("policy_retry").display().to_string()
    );
    let (_manifest, node) = gateway(
        "partner",
        &target,
        &format!("{allowed}\noutbound_ca = {:?}", ca.display().to_string()),
        &retry,
    )
    .await;
    let addr = node.http_addr();

    // Allowed, verified against the manifest's CA: the partner answers, with the request's
    // Host, a traceparent, and none of the node's own headers.
    let reply = send(addr, "GET", "/proxy/v1/items?page=2", "").await;
    assert_eq!(
        reply.header("x-partner-status"),
        Some("200"),
        "{} {:?}",
        reply.status,
        reply.body
    );
    assert_eq!(
        reply.body,
        format!("partner: GET /v1/items?page=2 (host localhost:{port})\n")
    );
    assert_eq!(reply.header("x-saw-traceparent"), Some("true"));
    assert_eq!(reply.header("x-saw-node-headers"), Some("false"));

    // Through the policy bound to the host: the first 503 is retried, the guest sees 200.
    let before = partner.requests();
    let reply = send(addr, "GET", "/proxy/flaky", "").await;
    assert_eq!(
        reply.header("x-partner-status"),
        Some("200"),
        "{}",
        reply.body
    );
    assert_eq!(partner.requests() - before, 2, "one retry");
    node.shutdown().await;

    // Not listed, or listed on another port: refused before a byte leaves, and the log names
    // the manifest key to change.
    let before = partner.requests();
    for (name, extra) in [
        ("unlisted", String::new()),
        (
            "wrong-port",
            "allowed_outbound_hosts = [\"https://localhost:1\"]".to_owned(),
        ),
        // Allowed, but verified against the system's roots, which do not hold the test CA.
        ("system-roots", allowed.clone()),
    ] {
        let (_manifest, node) = gateway(name, &target, &extra, "").await;
        let reply = send(node.http_addr(), "GET", "/proxy/x", "").await;
        assert_ne!(
            reply.header("x-partner-status"),
            Some("200"),
            "{name}: {}",
            reply.body
        );
        node.shutdown().await;
    }
    assert_eq!(
        partner.requests(),
        before,
        "a refused request reached the partner"
    );
    let log = logs();
    assert!(
        log.contains(&format!(
            "service `unlisted` may not send HTTP to https://localhost:{port}: its \
             allowed_outbound_hosts is empty"
        )),
        "{log}"
    );
    assert!(
        log.contains("service `wrong-port` may not send HTTP")
            && log.contains("allowed_outbound_hosts lists https://localhost:1"),
        "{log}"
    );
    assert!(
        log.contains(&format!("TLS with localhost:{port} failed")),
        "{log}"
    );
}
