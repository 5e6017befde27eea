//! Discovery through a real etcd server (Debian's `etcd-server`, installed by
//! `cargo xtask test`): leases, watch, revoke on shutdown, expiry on a crash.

use crate::support::admin_get;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use switchyard::Node;

use crate::support::{TestManifest, get, send, service};

/// An etcd server on free loopback ports, killed on drop.
struct Etcd {
    child: Option<Child>,
    client: SocketAddr,
    peer_port: u16,
    dir: tempfile::TempDir,
    /// Set: clients speak https and must show a certificate from this CA.
    tls: Option<TlsFiles>,
}

/// PEM files in a directory: a CA, etcd's server certificate (for 127.0.0.1) and a client
/// certificate, all from that CA.
struct TlsFiles {
    dir: tempfile::TempDir,
}

impl TlsFiles {
    fn new() -> Self {
        use rcgen::{CertificateParams, Issuer, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: &str| std::fs::write(dir.path().join(name), pem).unwrap();
        let ca = switchyard::cert::generate_ca("etcd-test").unwrap();
        write("ca.pem", &ca.cert);
        let issuer =
            Issuer::from_ca_cert_pem(&ca.cert, KeyPair::from_pem(&ca.key).unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        write("server.pem", &server.pem());
        write("server.key", &key.serialize_pem());
        let client = switchyard::cert::issue_node_cert(&ca, "etcd-client").unwrap();
        write("client.pem", &client.cert);
        write("client.key", &client.key);
        let stranger = switchyard::cert::generate_ca("stranger").unwrap();
        write("stranger-ca.pem", &stranger.cert);
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Etcd {
    /// Kills the server (its data stays).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server on its ports and data, and waits until it listens.
    async fn start(&mut self) {
        let (client, peer_port) = (self.client, self.peer_port);
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let tls_args = match &self.tls {
            None => Vec::new(),
            Some(tls) => vec![
                "--cert-file".to_owned(),
                tls.path("server.pem"),
                "--key-file".to_owned(),
                tls.path("server.key"),
                "--client-cert-auth".to_owned(),
                "--trusted-ca-file".to_owned(),
                tls.path("ca.pem"),
            ],
        };
        let child = Command::new(etcd_binary())
            .args(tls_args)
            .args([
                "--name",
                "test",
                "--data-dir",
                &self.dir.path().join("data").display().to_string(),
                "--listen-client-urls",
                &format!("{scheme}://{client}"),
                "--advertise-client-urls",
                &format!("{scheme}://{client}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer_port}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer_port}"),
                "--initial-cluster",
                &format!("test=http://127.0.0.1:{peer_port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(client).await.is_err() {
            assert!(Instant::now() < deadline, "etcd did not start on {client}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn etcd_binary() -> PathBuf {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "etcd is not installed: `cargo xtask test` installs it, or run \
                 `apt-get install -y etcd-server`"
            )
        })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap()
}

async fn start_etcd() -> Etcd {
    let client: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    start_etcd_on(client).await
}

async fn start_etcd_on(client: SocketAddr) -> Etcd {
    let mut etcd = Etcd {
        child: None,
        client,
        peer_port: free_port(),
        dir: tempfile::tempdir().unwrap(),
        tls: None,
    };
    etcd.start().await;
    etcd
}

fn node(name: &str, etcd: SocketAddr, services: &str) -> TestManifest {
    TestManifest::with_node(
        &format!(
            "name = \"{name}\"\nquic = \"127.0.0.1:0\"\n\
             discovery = {{ backend = \"etcd\", endpoints = [\"http://{etcd}\"], prefix = \"/test\" }}"
        ),
        services,
    )
}

async fn wait_until(admin: &Node, what: &str, present: bool, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let registry = admin_get(admin, "/registry").await.body;
        if registry.contains(what) == present {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "`{what}` present={} after {within:?}: {registry}",
            !present
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to 5 s) until the node at `admin` has learnt of `hello` through etcd.
async fn wait_for_hello(admin: &Node) {
    wait_until(admin, "hello@1.0.0", true, Duration::from_secs(5)).await;
}

/// Waits until `caller` has learnt of `hello` through etcd, then calls it with `name`.
async fn call_hello_once_seen(caller: &switchyard::Node, name: &str) {
    wait_for_hello(caller).await;
    let call = format!("hello\nGET /hello/{name}");
    let reply = send(caller.http_addr(), "POST", "/f/call", &call).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, format!("Hello, {name}!\n").as_str())
    );
}

/// A caller (`faulty`) and a callee (`hello`) registered in `etcd`, once the caller has called
/// the callee.
async fn caller_and_callee(etcd: &Etcd) -> (TestManifest, Node, TestManifest, Node) {
    let caller_manifest = node(
        "caller",
        etcd.client,
        &service("faulty", "faulty", &["POST /f/{fault}"], ""),
    );
    let caller = caller_manifest.start().await;
    let hello = service("hello", "hello", &["GET /hello/{name}"], "");
    let callee_manifest = node("callee", etcd.client, &hello);
    let callee = callee_manifest.start().await;
    call_hello_once_seen(&caller, "etcd").await;
    (caller_manifest, caller, callee_manifest, callee)
}

#[tokio::test]
async fn nodes_find_each_other_through_etcd_and_leave_by_revoke_or_lease_expiry() {
    let etcd = start_etcd().await;
    let (_caller_manifest, caller, callee_manifest, callee) = caller_and_callee(&etcd).await;
    // Keep-alives hold the registration well past the lease TTL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_until(&caller, "hello@1.0.0", true, Duration::ZERO).await;

    // Graceful shutdown revokes the lease: the watch removes the callee at once.
    let leaving = Instant::now();
    callee.shutdown().await;
    wait_until(&caller, "hello@", false, Duration::from_secs(1)).await;
    assert!(
        leaving.elapsed() < Duration::from_secs(1),
        "{:?}",
        leaving.elapsed()
    );
    let reply = send(caller.http_addr(), "POST", "/f/call", "hello\nGET /hello/x").await;
    assert_eq!(reply.status, 503, "{}", reply.body);

    // A crashed node (dropped, no revoke) goes when its lease runs out: etcd's TTL of 2 s
    // plus at most one keep-alive period it had already paid for (TTL / 3).
    let crashed = callee_manifest.start().await;
    wait_for_hello(&caller).await;
    drop(crashed);
    let gone = wait_until(&caller, "hello@", false, Duration::from_secs(5)).await;
    assert!(
        gone < Duration::from_millis(3500),
        "forgotten after {gone:?}"
    );
    assert!(
        gone > Duration::from_millis(1000),
        "forgotten too soon ({gone:?}): not by lease"
    );

    caller.shutdown().await;
}

/// Whoever can write to etcd can put any entry there; a node believes one only if the node
/// it names signed it.
#[tokio::test]
async fn an_etcd_entry_its_node_did_not_sign_is_not_believed() {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    let etcd = start_etcd().await;
    let (_caller_manifest, caller, _callee_manifest, callee) = caller_and_callee(&etcd).await;

    let etcd_post = |path: &'static str, body: serde_json::Value| async move {
        let reply = send(etcd.client, "POST", path, &body.to_string()).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        serde_json::from_str::<serde_json::Value>(&reply.body).unwrap()
    };
    let key = format!("/test/nodes/{}", callee.quic_addr().unwrap());
    let found = etcd_post(
        "/v3/kv/range",
        serde_json::json!({ "key": BASE64.encode(&key) }),
    )
    .await;
    let value = found["kvs"][0]["value"].as_str().unwrap();
    let mut entry: serde_json::Value =
        serde_json::from_slice(&BASE64.decode(value).unwrap()).unwrap();
    // The callee's own signed entry, with a service added, at its key and at another's.
    entry["services"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!(["payments", "1.0.0"]));
    entry["beat"] = serde_json::json!(entry["beat"].as_u64().unwrap() + 1);
    let forged = BASE64.encode(entry.to_string());
    etcd_post(
        "/v3/kv/put",
        serde_json::json!({ "key": BASE64.encode(&key), "value": forged }),
    )
    .await;
    entry["address"] = serde_json::json!("127.0.0.1:9");
    etcd_post(
        "/v3/kv/put",
        serde_json::json!({
            "key": BASE64.encode("/test/nodes/127.0.0.1:9"),
            "value": BASE64.encode(entry.to_string()),
        }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let registry = admin_get(&caller, "/registry").await.body;
    assert!(!registry.contains("payments"), "{registry}");
    assert!(!registry.contains("127.0.0.1:9"), "{registry}");
    // What the callee itself signed still stands.
    assert!(registry.contains("hello@1.0.0"), "{registry}");
    callee.shutdown().await;
    caller.shutdown().await;
}

/// etcd down when the node starts: the node serves anyway and registers once etcd is up.
#[tokio::test]
async fn a_node_starts_without_etcd_and_registers_when_it_comes_up() {
    let client: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let hello = service("hello", "hello", &["GET /hello/{name}"], "");
    let early_manifest = node("early", client, &hello);
    let early = early_manifest.start().await;
    assert_eq!(get(early.http_addr(), "/hello/x").await.status, 200);
    let etcd = start_etcd_on(client).await;
    let watcher_manifest = node("watcher", etcd.client, "");
    let watcher = watcher_manifest.start().await;
    wait_for_hello(&watcher).await;
    early.shutdown().await;
    watcher.shutdown().await;
}

/// etcd goes away while nodes run: they keep calling each other with what they last knew,
/// well past the lease TTL, and once etcd is back they register again and the watch sees a
/// node that joined since.
#[tokio::test]
async fn nodes_ride_out_an_etcd_outage_and_register_again_when_it_returns() {
    let mut etcd = start_etcd().await;
    let hello = service("hello", "hello", &["GET /hello/{name}"], "");
    let callee_manifest = node("callee", etcd.client, &hello);
    let callee = callee_manifest.start().await;
    let caller_manifest = node(
        "caller",
        etcd.client,
        &service("faulty", "faulty", &["POST /f/{fault}"], ""),
    );
    let caller = caller_manifest.start().await;
    wait_for_hello(&caller).await;

    etcd.stop();
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(3) {
        let reply = send(caller.http_addr(), "POST", "/f/call", "hello\nGET /hello/x").await;
        assert_eq!(reply.status, 200, "during the outage: {}", reply.body);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    etcd.start().await;
    let late_manifest = node(
        "late",
        etcd.client,
        &service("echo-late", "faulty", &["GET /late/{fault}"], ""),
    );
    let late = late_manifest.start().await;
    wait_until(&caller, "echo-late@1.0.0", true, Duration::from_secs(10)).await;
    // Leases from before the outage have run out by now; the callee's new one holds it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    wait_until(&caller, "hello@1.0.0", true, Duration::ZERO).await;
    let reply = send(
        caller.http_addr(),
        "POST",
        "/f/call",
        "hello\nGET /hello/back",
    )
    .await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "Hello, back!\n"));

    late.shutdown().await;
    callee.shutdown().await;
    caller.shutdown().await;
}

/// A service added to a running node's manifest is put into etcd under the node's lease, and
/// a removed one drops out, so callers on other nodes follow the edit.
#[tokio::test]
async fn services_added_and_removed_by_a_manifest_edit_reach_etcd() {
    let etcd = start_etcd().await;
    let caller_manifest = node(
        "caller",
        etcd.client,
        &service("faulty", "faulty", &["POST /f/{fault}"], ""),
    );
    let caller = caller_manifest.start().await;
    let hello = service("hello", "hello", &["GET /hello/{name}"], "");
    let callee_manifest = node("callee", etcd.client, &hello);
    let mut callee = callee_manifest.start().await;
    let (reports, mut reported) = tokio::sync::mpsc::unbounded_channel();
    callee.watch_manifest(Some(reports)).unwrap();
    wait_for_hello(&caller).await;

    let original = std::fs::read_to_string(&callee_manifest.path).unwrap();
    let echo = service("echo", "faulty", &["GET /e/{fault}"], "");
    callee_manifest.edit(&format!("{}{echo}", original.replace(&hello, "")));
    let report = crate::support::next_reload(&mut reported).await;
    assert_eq!(
        report.applied,
        vec![
            "service `echo` added".to_owned(),
            "service `hello` removed".to_owned()
        ],
        "{report:?}"
    );
    wait_until(&caller, "echo@1.0.0", true, Duration::from_secs(2)).await;
    wait_until(&caller, "hello@", false, Duration::ZERO).await;
    let reply = send(caller.http_addr(), "POST", "/f/call", "echo\nGET /e/echo").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Still registered past the lease TTL: the new entry is under the live lease.
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_until(&caller, "echo@1.0.0", true, Duration::ZERO).await;
    callee.shutdown().await;
    caller.shutdown().await;
}

/// etcd over https with client certificates: nodes given the CA and a client certificate
/// register and find each other; one that trusts another CA never gets in, and says why.
#[tokio::test]
async fn nodes_reach_etcd_over_https_with_client_certificates() {
    let mut etcd = Etcd {
        child: None,
        client: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        peer_port: free_port(),
        dir: tempfile::tempdir().unwrap(),
        tls: Some(TlsFiles::new()),
    };
    etcd.start().await;
    let tls = etcd.tls.as_ref().unwrap();
    let node = |name: &str, ca: &str, services: &str| {
        TestManifest::with_node(
            &format!(
                "name = \"{name}\"\nquic = \"127.0.0.1:0\"\n\
                 discovery = {{ backend = \"etcd\", endpoints = [\"https://{}\"], prefix = \"/tls\", \
                 tls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }} }}",
                etcd.client,
                tls.path(ca),
                tls.path("client.pem"),
                tls.path("client.key")
            ),
            services,
        )
    };
    let caller_manifest = node(
        "caller",
        "ca.pem",
        &service("faulty", "faulty", &["POST /f/{fault}"], ""),
    );
    let caller = caller_manifest.start().await;
    let callee_manifest = node(
        "callee",
        "ca.pem",
        &service("hello", "hello", &["GET /hello/{name}"], ""),
    );
    let callee = callee_manifest.start().await;
    call_hello_once_seen(&caller, "tls").await;

    // Trusting another CA, a node cannot verify etcd: it serves, but learns nothing.
    crate::support::capture_logs();
    let stranger_manifest = node(
        "stranger",
        "stranger-ca.pem",
        &service("faulty", "faulty", &["POST /f/{fault}"], ""),
    );
    let stranger = stranger_manifest.start().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let registry = admin_get(&stranger, "/registry").await.body;
    assert!(!registry.contains("hello"), "{registry}");
    wait_until(&caller, "stranger", false, Duration::ZERO).await;
    let logged = crate::support::logs();
    assert!(
        logged.contains("TLS handshake failed"),
        "no TLS failure logged:\n{logged}"
    );
    for node in [stranger, callee, caller] {
        node.shutdown().await;
    }
}
