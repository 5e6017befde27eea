//! Helpers: manifests in temp dirs, nodes on port 0, a tiny HTTP/1.1 client, captured logs.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use switchyard::{Manifest, Node};

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A guest component built by `cargo xtask build-guests`.
pub(crate) fn guest(name: &str) -> PathBuf {
    let path = repo_root().join(format!("target/guests/wasm32-wasip2/release/{name}.wasm"));
    assert!(
        path.is_file(),
        "guest component {} is missing: run `cargo xtask build-guests` (or `cargo xtask test`)",
        path.display()
    );
    path
}

/// The release `switchyard` binary built by `cargo xtask test`.
pub(crate) fn switchyard_bin() -> PathBuf {
    let path = repo_root().join("target/release/switchyard");
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo xtask test`",
        path.display()
    );
    path
}

/// What a run of the `switchyard` binary printed.
pub(crate) struct CliRun {
    pub(crate) success: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs the release `switchyard` binary with `args` (from a test on the runtime: it does not
/// block the nodes the command talks to).
pub(crate) async fn switchyard_cli(args: &[&str]) -> CliRun {
    let out = tokio::process::Command::new(switchyard_bin())
        .args(args)
        .output()
        .await
        .unwrap();
    CliRun {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A manifest file in its own temp dir: `[node]` on free loopback ports, then `services`.
pub(crate) struct TestManifest {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) path: PathBuf,
}

impl TestManifest {
    pub(crate) fn new(services: &str) -> Self {
        Self::with_node("name = \"test\"", services)
    }

    /// Like [`TestManifest::new`], with extra `[node]` lines (name, quic, seeds, tls).
    pub(crate) fn with_node(node: &str, services: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchyard.toml");
        let text = format!(
            "[node]\n{node}\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
             data_dir = \"data\"\n\n{services}"
        );
        std::fs::write(&path, text).unwrap();
        Self { dir, path }
    }

    /// Replaces the file's text as editors do: a new file renamed over the old.
    pub(crate) fn edit(&self, text: &str) {
        let scratch = self.path.with_extension("toml.new");
        std::fs::write(&scratch, text).unwrap();
        std::fs::rename(&scratch, &self.path).unwrap();
    }

    pub(crate) fn load(&self) -> Manifest {
        Manifest::load(&self.path).unwrap_or_else(|err| panic!("{err}"))
    }

    pub(crate) async fn start(&self) -> Node {
        Node::start(&self.load())
            .await
            .unwrap_or_else(|err| panic!("{err}"))
    }
}

/// `[[service]]` for a guest component, with extra TOML lines.
pub(crate) fn service(name: &str, guest_name: &str, routes: &[&str], extra: &str) -> String {
    service_at(name, &guest(guest_name), routes, extra)
}

/// `[[service]]` for wstd's published proxy example: `GET /proxy/<rest>` is sent on to
/// `<target><rest>` (the example forwards that path only), with extra TOML lines.
pub(crate) fn wstd_proxy(name: &str, target: &str, extra: &str) -> String {
    service(
        name,
        "http-wstd-proxy",
        &["GET /proxy/{*rest}"],
        &format!("env = {{ TARGET_URL = \"{target}\" }}\n{extra}"),
    )
}

/// `[[service]]` for the component at `path`, with extra TOML lines.
pub(crate) fn service_at(name: &str, path: &Path, routes: &[&str], extra: &str) -> String {
    let routes: Vec<String> = routes.iter().map(|r| format!("{r:?}")).collect();
    format!(
        "[[service]]\nname = \"{name}\"\nversion = \"1.0.0\"\ncomponent = {:?}\nroutes = [{}]\n{extra}\n",
        path.display().to_string(),
        routes.join(", ")
    )
}

pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: hyper::HeaderMap,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One request on a fresh connection.
pub(crate) async fn send(addr: SocketAddr, method: &str, path: &str, body: &str) -> Reply {
    send_with(addr, method, path, body, &[]).await
}

/// One request with extra headers on a fresh connection.
pub(crate) async fn send_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Reply {
    send_bytes(addr, method, path, body.as_bytes().to_vec(), headers).await
}

/// One request with a binary body and extra headers on a fresh connection (a `host` among
/// `headers` replaces the default, the address).
pub(crate) async fn send_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> Reply {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = Request::builder().method(method).uri(path);
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        request = request.header("host", addr.to_string());
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from(body))).unwrap();
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// `GET path` on a fresh HTTP/1.1 connection, or why it got no answer.
pub(crate) async fn try_get(addr: SocketAddr, path: &str) -> anyhow::Result<Reply> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = Request::get(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))?;
    let (parts, body) = sender.send_request(request).await?.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

pub(crate) async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, "GET", path, "").await
}

/// Everything the node logged in this test binary, as JSON lines (debug and up).
pub(crate) fn logs() -> String {
    let buffer = log_buffer();
    let bytes = buffer.lock().unwrap();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Installs the capturing subscriber (once per test binary).
pub(crate) fn capture_logs() {
    log_buffer();
}

fn log_buffer() -> Arc<Mutex<Vec<u8>>> {
    static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUFFER
        .get_or_init(|| {
            let buffer = Arc::new(Mutex::new(Vec::new()));
            let writer = buffer.clone();
            tracing_subscriber::fmt()
                .json()
                .with_current_span(true)
                .with_env_filter("switchyard=debug,guest=debug")
                .with_writer(move || SharedWriter(writer.clone()))
                .init();
            buffer
        })
        .clone()
}

struct SharedWriter(Arc<Mutex<Vec<u8>>>);

impl Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The headers every admin request needs: the node's own address as Host, and its token.
fn admin_headers(node: &Node) -> Vec<(String, String)> {
    let token = std::fs::read_to_string(node.admin_token_file()).unwrap();
    vec![
        ("host".into(), node.admin_addr().to_string()),
        ("authorization".into(), format!("Bearer {}", token.trim())),
    ]
}

/// A request to `node`'s admin API, with its token.
pub(crate) async fn admin_request(node: &Node, method: &str, path: &str, body: Vec<u8>) -> Reply {
    let headers = admin_headers(node);
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    send_bytes(node.admin_addr(), method, path, body, &headers).await
}

/// GET from `node`'s admin API, with its token.
pub(crate) async fn admin_get(node: &Node, path: &str) -> Reply {
    admin_request(node, "GET", path, Vec::new()).await
}

/// POSTs `body` to an admin endpoint of `node` (a swap), with its token; status and body.
pub(crate) async fn admin_post(node: &Node, path: &str, body: Vec<u8>) -> (u16, String) {
    let reply = admin_request(node, "POST", path, body).await;
    (reply.status, reply.body)
}

/// The report of the next manifest reload, within 5 s.
pub(crate) async fn next_reload(
    reported: &mut tokio::sync::mpsc::UnboundedReceiver<switchyard::node::ReloadReport>,
) -> switchyard::node::ReloadReport {
    tokio::time::timeout(std::time::Duration::from_secs(5), reported.recv())
        .await
        .expect("no reload within 5 s")
        .expect("the node stopped watching its manifest")
}

/// Waits until `service` on `admin` has `count` requests in flight, polling `/services`;
/// past `within` it fails with `what` and the last listing.
pub(crate) async fn wait_for_in_flight(
    admin: &Node,
    service: &str,
    count: u64,
    within: std::time::Duration,
    what: &str,
) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let services = admin_get(admin, "/services").await;
        let services: serde_json::Value = serde_json::from_str(&services.body).unwrap();
        let found = services
            .as_array()
            .and_then(|all| all.iter().find(|s| s["name"] == service))
            .cloned()
            .unwrap_or_default();
        if found["in_flight"] == count {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {services}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The entry named `name` of the admin listing at `path` (`/queues`, `/topics`).
pub(crate) async fn admin_entry(node: &Node, path: &str, name: &str) -> serde_json::Value {
    let listing: serde_json::Value =
        serde_json::from_str(&admin_get(node, path).await.body).unwrap();
    listing
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {path}: {listing}"))
        .clone()
}

/// Polls [`admin_entry`] until `done` holds for it; fails with the last one past `within`.
pub(crate) async fn wait_for_entry(
    node: &Node,
    path: &str,
    name: &str,
    within: std::time::Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = std::time::Instant::now();
    loop {
        let entry = admin_entry(node, path, name).await;
        if done(&entry) {
            return entry;
        }
        assert!(
            started.elapsed() < within,
            "gave up waiting; {path} has {entry:#}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A counter of an admin listing's entry (`u64::MAX` when it is missing).
pub(crate) fn count(entry: &serde_json::Value, key: &str) -> u64 {
    entry[key].as_u64().unwrap_or(u64::MAX)
}

/// A free loopback address (bound and released: another process may take it first, rarely).
pub(crate) fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Starts the node of `manifest`, its JSON log appended to `log`; returns once it serves.
pub(crate) async fn start_binary(
    manifest: &std::path::Path,
    log: &std::path::Path,
    http: std::net::SocketAddr,
) -> tokio::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = tokio::process::Command::new(switchyard_bin())
        .args(["--log-format", "json", "run"])
        .arg(manifest)
        .env("SWITCHYARD_LOG", "info,guest=info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while tokio::net::TcpStream::connect(http).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the node did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child
}

/// A real `nats-server` with JetStream on a free loopback port, its store in a temp dir;
/// killed when dropped. The README's test command installs it (Debian's `nats-server`).
pub(crate) struct NatsServer {
    pub(crate) url: String,
    pub(crate) addr: SocketAddr,
    child: Option<std::process::Child>,
    store: tempfile::TempDir,
    args: Vec<String>,
    jetstream: bool,
}

impl NatsServer {
    /// Core NATS only: no JetStream.
    pub(crate) async fn start_without_jetstream() -> Self {
        let mut server = Self::unstarted(&[]);
        server.jetstream = false;
        server.restart().await;
        server
    }

    pub(crate) async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// With extra `nats-server` arguments (e.g. `--user`, `--pass`).
    pub(crate) async fn start_with(args: &[&str]) -> Self {
        let mut server = Self::unstarted(args);
        server.restart().await;
        server
    }

    fn unstarted(args: &[&str]) -> Self {
        let addr = free_port();
        Self {
            url: format!("nats://{addr}"),
            addr,
            child: None,
            store: tempfile::tempdir().unwrap(),
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
            jetstream: true,
        }
    }

    /// Starts it (again) on the same port and store.
    pub(crate) async fn restart(&mut self) {
        let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|path| Path::new(path).is_file())
            .unwrap_or_else(|| {
                panic!("nats-server is not installed: run `cargo xtask test` (it installs Debian's nats-server)")
            });
        let child = std::process::Command::new(binary)
            .args(if self.jetstream { &["-js"][..] } else { &[] })
            .args(["-a", "127.0.0.1", "-p"])
            .arg(self.addr.port().to_string())
            .arg("-sd")
            .arg(self.store.path())
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while tokio::net::TcpStream::connect(self.addr).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `[messaging]` for a node on this server.
    pub(crate) fn section(&self) -> String {
        format!(
            "[messaging]\nbackend = \"nats\"\nservers = [\"{}\"]\n\n",
            self.url
        )
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Which messaging engine a semantic test runs on: the same test runs on both.
pub(crate) enum Backend {
    Embedded,
    Nats(NatsServer),
}

impl Backend {
    pub(crate) async fn nats() -> Self {
        Self::Nats(NatsServer::start().await)
    }

    /// The manifest's `[messaging]` table for it (none for the embedded default).
    pub(crate) fn section(&self) -> String {
        match self {
            Self::Embedded => String::new(),
            Self::Nats(server) => server.section(),
        }
    }

    pub(crate) fn is_nats(&self) -> bool {
        matches!(self, Self::Nats(_))
    }
}

/// Switchyard's home for the tests (`SWITCHYARD_HOME`): the SDK the binary carries, the Rust
/// guests' shared target directory and the pinned componentize-py and ComponentizeJS, kept
/// under `target/` so every test and every run on a checkout share them.
pub(crate) fn switchyard_home() -> PathBuf {
    repo_root().join("target/switchyard-home")
}

/// `switchyard <args>` (blocking) with the tests' home; returns its stderr, panics on failure.
pub(crate) fn switchyard_in_home(args: &[&std::ffi::OsStr]) -> String {
    let out = std::process::Command::new(switchyard_bin())
        .args(args)
        .env("SWITCHYARD_HOME", switchyard_home())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "switchyard {args:?} failed:\n{}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// A guest project of `guests/` in another language, built by `switchyard build` once per
/// test run (tests that share it wait for the first build); its component's path.
pub(crate) fn built_project(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let dir = repo_root().join("guests").join(name);
    let mut built = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !built.iter().any(|done| done == name) {
        switchyard_in_home(&["build".as_ref(), dir.as_os_str()]);
        built.push(name.to_owned());
    }
    dir.join("build").join(format!("{name}.wasm"))
}

/// A CA that issues `localhost` certificates into PEM files.
pub(crate) struct Pki {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_pem: String,
}

impl Pki {
    pub(crate) fn new(name: &str) -> Self {
        let ca = switchyard::cert::generate_ca(name).unwrap();
        let issuer =
            rcgen::Issuer::from_ca_cert_pem(&ca.cert, rcgen::KeyPair::from_pem(&ca.key).unwrap())
                .unwrap();
        Self {
            issuer,
            ca_pem: ca.cert,
        }
    }

    pub(crate) fn write_ca(&self, path: &Path) {
        std::fs::write(path, &self.ca_pem).unwrap();
    }

    /// A leaf for `localhost` named `common_name`, written as editors and certificate
    /// managers do: a new file renamed over the old.
    pub(crate) fn issue(&self, common_name: &str, cert: &Path, key: &Path) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let pair = rcgen::KeyPair::generate().unwrap();
        let leaf = params.signed_by(&pair, &self.issuer).unwrap();
        for (path, text) in [(key, pair.serialize_pem()), (cert, leaf.pem())] {
            let scratch = path.with_extension("new");
            std::fs::write(&scratch, text).unwrap();
            std::fs::rename(&scratch, path).unwrap();
        }
    }

    pub(crate) fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(
                <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::from_pem_slice(
                    self.ca_pem.as_bytes(),
                )
                .unwrap(),
            )
            .unwrap();
        roots
    }
}
