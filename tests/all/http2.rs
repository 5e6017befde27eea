//! The ingress speaks HTTP/2 beside HTTP/1.1: in clear text with prior knowledge, and over TLS
//! (`[node] http_tls`) by ALPN, with its limits, certificate reload and client certificates.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};

use crate::support::{Pki, TestManifest, get, service};

fn services() -> String {
    format!(
        "{}{}",
        service("hello", "hello", &["GET /hello/{name}"], ""),
        service(
            "faulty",
            "faulty",
            &["GET /f/{fault}/{arg}"],
            "max_instances = 16"
        )
    )
}

/// A raw h2 client connection (prior knowledge) and its driver's outcome.
async fn h2_client(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    (client, tokio::spawn(connection))
}

fn h2_get(addr: SocketAddr, path: &str) -> Request<()> {
    Request::get(format!("http://{addr}{path}"))
        .body(())
        .unwrap()
}

async fn h2_body(response: h2::client::ResponseFuture) -> (u16, String) {
    let response = response.await.unwrap();
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    (status, String::from_utf8_lossy(&text).into_owned())
}

#[tokio::test]
async fn http2_with_prior_knowledge_and_http1_share_the_port_within_the_stream_limits() {
    let manifest = TestManifest::with_node(
        "name = \"h2\"\nmax_concurrent_streams = 2\nmax_header_kb = 2",
        &services(),
    );
    let node = manifest.start().await;
    let addr = node.http_addr();

    // HTTP/1.1 as before.
    let reply = get(addr, "/hello/ada").await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // HTTP/2 through hyper's client: the same answer, as HTTP/2.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let response = sender
        .send_request(
            Request::get(format!("http://{addr}/hello/ada"))
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("ada"), "{body:?}");

    // The node tells clients its stream limit, and three slow requests on one connection take
    // two rounds: the third waits for a stream.
    let (client, _driver) = h2_client(addr).await;
    let mut client = client.ready().await.unwrap();
    let (response, _) = client
        .send_request(h2_get(addr, "/hello/settings"), true)
        .unwrap();
    assert_eq!(h2_body(response).await.0, 200);
    assert_eq!(client.current_max_send_streams(), 2);
    let started = Instant::now();
    let mut answers = Vec::new();
    for _ in 0..3 {
        client = client.ready().await.unwrap();
        let (response, _) = client
            .send_request(h2_get(addr, "/f/sleep/700"), true)
            .unwrap();
        answers.push(tokio::spawn(h2_body(response)));
    }
    for answer in answers {
        let (status, body) = answer.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "three 700 ms requests on two streams took {:?}",
        started.elapsed()
    );

    // A header list past max_header_kb is refused; the connection serves on.
    let (mut client, _driver) = h2_client(addr).await;
    let big = Request::get(format!("http://{addr}/hello/big"))
        .header("x-big", "b".repeat(4096))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(big, true).unwrap();
    match response.await {
        Ok(response) => assert_eq!(response.status(), 431),
        Err(error) => assert!(
            error.reason().is_some(),
            "the oversized header list ended with {error}"
        ),
    }
    let mut client = client.ready().await.unwrap();
    let (response, _) = client
        .send_request(h2_get(addr, "/hello/small"), true)
        .unwrap();
    assert_eq!(h2_body(response).await.0, 200);
    node.shutdown().await;
}

#[tokio::test]
async fn a_rapid_reset_flood_ends_its_connection_and_the_node_serves_on() {
    crate::support::capture_logs();
    let manifest = TestManifest::with_node(
        "name = \"reset\"\nmax_pending_resets = 10\nidle_timeout_ms = 600",
        &services(),
    );
    let node = manifest.start().await;
    let addr = node.http_addr();
    let (client, driver) = h2_client(addr).await;
    let mut client = client.ready().await.unwrap();
    // Open and cancel streams as fast as the client can write them (CVE-2023-44487).
    let mut flood_error = None;
    for _ in 0..5_000 {
        client = match client.ready().await {
            Ok(client) => client,
            Err(error) => {
                flood_error = Some(error);
                break;
            }
        };
        match client.send_request(h2_get(addr, "/f/sleep/1000"), true) {
            Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
            Err(error) => {
                flood_error = Some(error);
                break;
            }
        }
        tokio::task::yield_now().await;
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), driver)
        .await
        .expect("the flooding connection is closed")
        .unwrap();
    // The client sees GOAWAY(ENHANCE_YOUR_CALM), or a broken pipe when the node closed the
    // socket while it was still writing; the node's log says which it was.
    let error = ended
        .err()
        .or(flood_error)
        .expect("the connection ended in an error");
    assert!(
        error.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || error.is_io(),
        "the flood ended with {error}"
    );
    let logs = crate::support::logs();
    assert!(
        logs.lines().any(|line| line.contains("rapid reset")
            && line.contains("excessive load")
            && line.contains("WARN")),
        "the node did not say why it closed the connection"
    );
    // Others are served as before.
    let (client, _driver) = h2_client(addr).await;
    let mut client = client.ready().await.unwrap();
    let (response, _) = client
        .send_request(h2_get(addr, "/hello/next"), true)
        .unwrap();
    assert_eq!(h2_body(response).await.0, 200);
    assert_eq!(get(addr, "/hello/again").await.status, 200);

    // A connection with nothing in progress for idle_timeout_ms is closed (GOAWAY, no error).
    let (_client, driver) = h2_client(addr).await;
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), driver)
        .await
        .expect("an idle HTTP/2 connection is closed");
    assert!(ended.unwrap().is_ok());
    assert!(started.elapsed() >= Duration::from_millis(500));
    node.shutdown().await;
}

fn client_config(
    pki: &Pki,
    alpn: &[&[u8]],
    identity: Option<(&Path, &Path)>,
) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(pki.roots());
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection to the ingress: the protocol ALPN chose and the server certificate's
/// common name.
async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<(
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Option<Vec<u8>>,
    String,
)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    // TLS 1.3 sends a refusal of the client's certificate after the handshake: a read sees it.
    let (_, session) = tls.get_mut();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let leaf = session.peer_certificates().unwrap()[0].clone();
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let name = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok((tls, alpn, name))
}

/// `GET path` over an open TLS connection, as HTTP/2 or HTTP/1.1.
async fn over_tls(
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    h2: bool,
    path: &str,
) -> Result<(hyper::Version, u16), hyper::Error> {
    let request = Request::get(format!("https://localhost{path}"))
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = if h2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        sender.send_request(request).await?
    } else {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        sender.send_request(request).await?
    };
    Ok((response.version(), response.status().as_u16()))
}

#[tokio::test]
async fn https_at_the_ingress_picks_the_protocol_by_alpn_and_reloads_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("edge.pem"), dir.path().join("edge.key"));
    let pki = Pki::new("edge test CA");
    pki.issue("edge-1", &cert, &key);
    let manifest = TestManifest::with_node(
        &format!(
            "name = \"edge\"\nhttp_tls = {{ cert = {:?}, key = {:?} }}",
            cert.display().to_string(),
            key.display().to_string()
        ),
        &services(),
    );
    let node = manifest.start().await;
    let addr = node.http_addr();

    let (tls, alpn, name) = tls_connect(addr, client_config(&pki, &[b"h2", b"http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(name, "edge-1");
    assert_eq!(
        over_tls(tls, true, "/hello/tls").await.unwrap(),
        (hyper::Version::HTTP_2, 200)
    );
    let (tls, alpn, _) = tls_connect(addr, client_config(&pki, &[b"http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(
        over_tls(tls, false, "/hello/tls").await.unwrap(),
        (hyper::Version::HTTP_11, 200)
    );
    // Plain HTTP to the TLS port gets no answer.
    let plain = tokio::time::timeout(
        Duration::from_secs(5),
        crate::support::try_get(addr, "/hello/plain"),
    )
    .await
    .expect("a plain request to the TLS port ends");
    assert!(
        plain.is_err(),
        "plain HTTP was served: {:?}",
        plain.map(|r| r.status)
    );

    // A connection open before the renewal keeps working; new handshakes get the new one.
    let (kept, _, _) = tls_connect(addr, client_config(&pki, &[b"h2"], None))
        .await
        .unwrap();
    let (mut kept, kept_driver) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(kept))
            .await
            .unwrap();
    tokio::spawn(kept_driver);
    pki.issue("edge-2", &cert, &key);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, _, name) = tls_connect(addr, client_config(&pki, &[b"h2"], None))
            .await
            .unwrap();
        if name == "edge-2" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was not presented"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let response = kept
        .send_request(
            Request::get("https://localhost/hello/kept")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // A renewal whose key does not match is refused; the node keeps presenting edge-2.
    let other = dir.path().join("other.key");
    pki.issue("edge-3", &dir.path().join("other.pem"), &other);
    std::fs::copy(&other, &key).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, _, name) = tls_connect(addr, client_config(&pki, &[b"h2"], None))
        .await
        .unwrap();
    assert_eq!(name, "edge-2");
    node.shutdown().await;

    // At start, a key that does not match is a clear error naming both files.
    let error = match switchyard::Node::start(&manifest.load()).await {
        Ok(_) => panic!("a node started with a key that does not match its certificate"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("does not match the certificate") && error.contains("edge.key"),
        "{error}"
    );
}

#[tokio::test]
async fn with_a_client_ca_only_its_clients_are_served_the_guest_knows_them_and_a_renewed_ca_is_taken()
 {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("edge.pem"), dir.path().join("edge.key"));
    let servers = Pki::new("server CA");
    servers.issue("edge", &cert, &key);
    let clients = Pki::new("client CA");
    let client_ca = dir.path().join("clients.pem");
    clients.write_ca(&client_ca);
    let (client_cert, client_key) = (dir.path().join("app.pem"), dir.path().join("app.key"));
    clients.issue("app", &client_cert, &client_key);
    let (rogue_cert, rogue_key) = (dir.path().join("rogue.pem"), dir.path().join("rogue.key"));
    servers.issue("rogue", &rogue_cert, &rogue_key);
    let manifest = TestManifest::with_node(
        &format!(
            "name = \"mtls\"\nhttp_tls = {{ cert = {:?}, key = {:?}, client_ca = {:?} }}",
            cert.display().to_string(),
            key.display().to_string(),
            client_ca.display().to_string()
        ),
        &services(),
    );
    let node = manifest.start().await;
    let addr = node.http_addr();

    let with_cert = client_config(&servers, &[b"h2"], Some((&client_cert, &client_key)));
    let (tls, _, _) = tls_connect(addr, with_cert).await.unwrap();
    assert_eq!(
        over_tls(tls, true, "/hello/mtls").await.unwrap(),
        (hyper::Version::HTTP_2, 200)
    );
    for (what, config) in [
        ("no certificate", client_config(&servers, &[b"h2"], None)),
        (
            "a certificate of another CA",
            client_config(&servers, &[b"h2"], Some((&rogue_cert, &rogue_key))),
        ),
    ] {
        let refused = match tls_connect(addr, config).await {
            Err(_) => true,
            Ok((tls, _, _)) => over_tls(tls, true, "/hello/mtls").await.is_err(),
        };
        assert!(refused, "a client with {what} was served");
    }

    // The certificate request names the CA it takes, so a client with several certificates
    // can offer the right one.
    assert_eq!(
        hints_named(addr, &servers).await,
        ["client CA (Switchyard cluster CA)"],
        "the CAs named to the client"
    );

    // The guest learns who the client is from its verified certificate, and only from it.
    let with_cert = client_config(&servers, &[b"h2"], Some((&client_cert, &client_key)));
    let (tls, _, _) = tls_connect(addr, with_cert.clone()).await.unwrap();
    let mut open = h2_over_tls(tls).await;
    let identity = ["Subject=\"CN=app\";DNS=localhost"];
    assert_eq!(echo_over(&mut open, "CN=forged").await.unwrap(), identity);

    // A renewed client CA file is taken without a restart: the next handshakes check against
    // it, while the connection already open serves on.
    let renewed = Pki::new("renewed client CA");
    let (next_cert, next_key) = (dir.path().join("next.pem"), dir.path().join("next.key"));
    renewed.issue("next", &next_cert, &next_key);
    let scratch = dir.path().join("clients.new");
    renewed.write_ca(&scratch);
    std::fs::rename(&scratch, &client_ca).unwrap();
    let with_next = client_config(&servers, &[b"h2"], Some((&next_cert, &next_key)));
    let started = Instant::now();
    loop {
        if let Ok((tls, _, _)) = tls_connect(addr, with_next.clone()).await
            && let Ok((_, 200)) = over_tls(tls, true, "/hello/renewed").await
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "a client of the renewed CA is still refused"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refused = match tls_connect(addr, with_cert).await {
        Err(_) => true,
        Ok((tls, _, _)) => over_tls(tls, true, "/hello/mtls").await.is_err(),
    };
    assert!(refused, "a client of the replaced CA was still served");
    assert_eq!(
        hints_named(addr, &servers).await,
        ["renewed client CA (Switchyard cluster CA)"]
    );
    assert_eq!(echo_over(&mut open, "").await.unwrap(), identity);
    node.shutdown().await;
}

/// The common names of the CAs the ingress at `addr` names in its certificate request (the
/// client offers no certificate, so the handshake is refused after).
async fn hints_named(addr: SocketAddr, servers: &Pki) -> Vec<String> {
    #[derive(Debug, Default)]
    struct Hints(std::sync::Mutex<Vec<Vec<u8>>>);
    impl rustls::client::ResolvesClientCert for Hints {
        fn resolve(
            &self,
            root_hint_subjects: &[&[u8]],
            _schemes: &[rustls::SignatureScheme],
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            *self.0.lock().unwrap() = root_hint_subjects.iter().map(|s| s.to_vec()).collect();
            None
        }

        fn has_certs(&self) -> bool {
            true
        }
    }
    let hints = Arc::new(Hints::default());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(servers.roots())
    .with_client_cert_resolver(hints.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    let _ = tls_connect(addr, Arc::new(config)).await;
    let seen = hints.0.lock().unwrap().clone();
    seen.iter()
        .map(|subject| {
            let (_, name) =
                <x509_parser::x509::X509Name as x509_parser::prelude::FromDer<_>>::from_der(
                    subject,
                )
                .unwrap();
            name.iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// An HTTP/2 connection over `tls`, kept open.
async fn h2_over_tls(
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

/// The client certificate headers the faulty guest got on a request that claims the
/// certificate `forged` (unless empty) itself.
async fn echo_over(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    forged: &str,
) -> Result<Vec<String>, hyper::Error> {
    let mut request = Request::get("https://localhost/f/echo/who");
    if !forged.is_empty() {
        request = request.header("x-switchyard-client-cert", format!("Subject=\"{forged}\""));
    }
    let response = sender
        .send_request(request.body(Empty::new()).unwrap())
        .await?;
    let body = response.into_body().collect().await?.to_bytes();
    let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    Ok(echoed["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pair| pair[0] == "x-switchyard-client-cert")
        .map(|pair| pair[1].as_str().unwrap().to_owned())
        .collect())
}

/// One HTTP/2 frame as it came off the wire.
struct RawFrame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;

/// Reads the next frame, `None` once the node closed the connection.
async fn read_frame(tcp: &mut tokio::net::TcpStream) -> Option<RawFrame> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    tcp.read_exact(&mut head).await.ok()?;
    let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; length];
    tcp.read_exact(&mut payload).await.ok()?;
    Some(RawFrame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let length = (payload.len() as u32).to_be_bytes();
    let mut bytes = vec![length[1], length[2], length[3], kind, flags, 0, 0, 0, 0];
    bytes.extend_from_slice(payload);
    bytes
}

/// A bare HTTP/2 client: the preface and empty settings, then the node's settings acknowledged.
/// Returns the node's settings (identifier, value) and its first connection window update.
async fn raw_h2(addr: SocketAddr) -> (tokio::net::TcpStream, Vec<(u16, u32)>, u32) {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(SETTINGS, 0, &[]));
    tcp.write_all(&hello).await.unwrap();
    let (mut settings, mut window_update) = (None, None);
    while settings.is_none() || window_update.is_none() {
        let frame = read_frame(&mut tcp).await.expect("the node's first frames");
        match frame.kind {
            SETTINGS if frame.flags & 1 == 0 => {
                settings = Some(
                    frame
                        .payload
                        .chunks(6)
                        .map(|s| {
                            let id = u16::from_be_bytes([s[0], s[1]]);
                            (id, u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
                        })
                        .collect::<Vec<_>>(),
                );
            }
            WINDOW_UPDATE if frame.stream == 0 => {
                let p = &frame.payload;
                window_update = Some(u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff);
            }
            _ => {}
        }
    }
    tcp.write_all(&frame(SETTINGS, 1, &[])).await.unwrap();
    (tcp, settings.unwrap(), window_update.unwrap())
}

#[tokio::test]
async fn flow_control_windows_and_keepalive_pings_are_the_manifests() {
    let manifest = TestManifest::with_node(
        "name = \"windows\"\nstream_window_kb = 16\nconnection_window_kb = 100\n\
         keepalive_ms = 1000\nidle_timeout_ms = 60000",
        &format!(
            "{}{}",
            services(),
            service("upload", "hello", &["POST /up/{name}"], "")
        ),
    );
    let node = manifest.start().await;
    let addr = node.http_addr();

    // On the wire: the stream window in the settings, the connection's grown to its size.
    let (mut tcp, settings, window_update) = raw_h2(addr).await;
    const INITIAL_WINDOW_SIZE: u16 = 0x4;
    assert!(
        settings.contains(&(INITIAL_WINDOW_SIZE, 16 * 1024)),
        "settings {settings:?}"
    );
    assert_eq!(window_update + 65_535, 100 * 1024);

    // A client may send that much on a stream, and no more than the connection's window on
    // all of them, before the node takes it: 16 KiB, 16, ... and the rest of 100.
    let (client, _driver) = h2_client(addr).await;
    let mut client = client.ready().await.unwrap();
    let (response, _) = client
        .send_request(h2_get(addr, "/hello/first"), true)
        .unwrap();
    assert_eq!(h2_body(response).await.0, 200);
    let mut granted = Vec::new();
    let mut uploads = Vec::new();
    for n in 0..7 {
        client = client.ready().await.unwrap();
        let upload = Request::post(format!("http://{addr}/up/{n}"))
            .body(())
            .unwrap();
        let (_response, mut stream) = client.send_request(upload, false).unwrap();
        stream.reserve_capacity(64 * 1024);
        let capacity = tokio::time::timeout(
            Duration::from_secs(5),
            std::future::poll_fn(|cx| stream.poll_capacity(cx)),
        )
        .await
        .expect("the node grants a window")
        .unwrap()
        .unwrap();
        granted.push(capacity);
        uploads.push(stream);
    }
    assert_eq!(
        granted,
        [16_384, 16_384, 16_384, 16_384, 16_384, 16_384, 4_096],
        "windows granted"
    );
    drop(uploads);

    // Keep-alive: a ping every second of silence; a client that answers keeps its connection.
    use tokio::io::AsyncWriteExt;
    let started = Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_millis(3500) {
        let Ok(frame) = tokio::time::timeout(Duration::from_secs(2), read_frame(&mut tcp)).await
        else {
            panic!("no ping within two keep-alive intervals");
        };
        let frame = frame.expect("the node closed a connection that answers its pings");
        if frame.kind == PING && frame.flags & 1 == 0 {
            pings += 1;
            tcp.write_all(&self::frame(PING, 1, &frame.payload))
                .await
                .unwrap();
        }
    }
    assert!(pings >= 2, "{pings} pings in 3.5 s at keepalive_ms = 1000");

    // One that does not is closed a keep-alive interval after the unanswered ping.
    let (mut silent, _, _) = raw_h2(addr).await;
    let started = Instant::now();
    let mut pinged = None;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut silent))
            .await
            .expect("the node closes a connection that does not answer its pings");
        match frame {
            Some(frame) if frame.kind == PING && frame.flags & 1 == 0 => {
                pinged.get_or_insert(started.elapsed());
            }
            Some(_) => {}
            None => break,
        }
    }
    let pinged = pinged.expect("a ping before the close");
    assert!(
        pinged >= Duration::from_millis(900),
        "pinged after {pinged:?}"
    );
    assert!(
        started.elapsed() >= pinged + Duration::from_millis(900),
        "closed {:?} after the ping",
        started.elapsed() - pinged
    );
    node.shutdown().await;
}
