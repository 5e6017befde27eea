//! The admin API as an attacker and as an operator meet it: its token, its own Host, no web
//! pages, TLS off loopback, a bound on compiles, an audit line per change, and what a later
//! manifest edit does to an admin swap.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{
    TestManifest, admin_get, admin_post, capture_logs, get, guest, logs, send, send_bytes, service,
    switchyard_cli,
};

/// The bytes of the next version of `hello`, the upload every swap here sends.
fn hello_v2() -> Vec<u8> {
    std::fs::read(guest("hello_v2")).unwrap()
}

#[tokio::test]
async fn every_endpoint_but_health_needs_the_token_from_the_admin_address_and_no_web_page() {
    capture_logs();
    let manifest = TestManifest::new(&service("hello", "hello", &["GET /hello/{name}"], ""));
    let node = manifest.start().await;
    let admin = node.admin_addr();
    let token = std::fs::read_to_string(node.admin_token_file()).unwrap();
    let bearer = format!("Bearer {}", token.trim());
    let own_host = admin.to_string();

    // The generated token is readable by the node's user only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(node.admin_token_file())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(node.admin_token_file().starts_with(manifest.dir.path()));

    // Without a token: health only.
    assert_eq!(get(admin, "/health").await.status, 200);
    for path in ["/services", "/registry", "/policies", "/queues"] {
        let reply = get(admin, path).await;
        assert_eq!(reply.status, 401, "{path}: {}", reply.body);
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        assert!(reply.body.contains("admin.token"), "{}", reply.body);
    }
    let wrong = send_bytes(
        admin,
        "POST",
        "/services/hello",
        hello_v2(),
        &[("authorization", "Bearer not-the-token-at-all")],
    )
    .await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert_eq!(admin_get(&node, "/services").await.status, 200);

    // A DNS name rebound to loopback, or a web page's POST, is refused even with the token.
    let rebound = send_bytes(
        admin,
        "GET",
        "/services",
        Vec::new(),
        &[
            ("host", "attacker.example:9090"),
            ("authorization", &bearer),
        ],
    )
    .await;
    assert_eq!(rebound.status, 403, "{}", rebound.body);
    let page = send_bytes(
        admin,
        "POST",
        "/services/hello",
        hello_v2(),
        &[
            ("host", &own_host),
            ("authorization", &bearer),
            ("origin", "http://attacker.example"),
        ],
    )
    .await;
    assert_eq!(page.status, 403, "{}", page.body);
    // Nothing of that was swapped.
    let hello = get(node.http_addr(), "/hello/ada").await;
    assert_eq!(hello.body, "Hello, ada!\n");

    // The operator's swap goes through, and leaves an audit line with what, the
    // component's hash and where it came from; so do the refusals.
    let v2 = hello_v2();
    let sha256 = {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(&v2))
    };
    let (status, body) = admin_post(&node, "/services/hello", v2).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        get(node.http_addr(), "/hello/ada").await.body,
        "Hello v2, ada!\n"
    );
    let (status, _) = admin_post(&node, "/queues/none/redrive", Vec::new()).await;
    assert_eq!(status, 404);
    let audit: Vec<serde_json::Value> = logs()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .filter(|line: &serde_json::Value| line["target"] == "switchyard::audit")
        .collect();
    let swap = audit
        .iter()
        .find(|line| line["fields"]["sha256"] == sha256.as_str())
        .unwrap_or_else(|| panic!("no audit line for the swap: {audit:?}"));
    assert_eq!(swap["fields"]["action"], "swap services");
    assert_eq!(swap["fields"]["name"], "hello");
    assert!(
        swap["fields"]["from"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(
        audit
            .iter()
            .any(|line| line["fields"]["action"] == "redrive" && line["fields"]["queue"] == "none"),
        "{audit:?}"
    );
    assert!(
        audit.iter().any(|line| line["fields"]["action"] == "denied"
            && line["fields"]["reason"]
                .as_str()
                .is_some_and(|reason| reason.contains("attacker.example"))),
        "{audit:?}"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn the_token_is_the_operators_file_and_a_rotation_counts_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "first-token-of-the-operator\n").unwrap();
    let manifest = TestManifest::with_node(
        &format!(
            "name = \"test\"\nadmin_token_file = {:?}",
            token_file.display().to_string()
        ),
        &service("hello", "hello", &["GET /hello/{name}"], ""),
    );
    let node = manifest.start().await;
    assert_eq!(node.admin_token_file(), token_file);
    let with = |token: &'static str| {
        let admin = node.admin_addr();
        async move {
            send_bytes(
                admin,
                "GET",
                "/services",
                Vec::new(),
                &[("authorization", &format!("Bearer {token}"))],
            )
            .await
            .status
        }
    };
    assert_eq!(with("first-token-of-the-operator").await, 200);
    std::fs::write(&token_file, "second-token-of-the-operator\n").unwrap();
    assert_eq!(with("first-token-of-the-operator").await, 401);
    assert_eq!(with("second-token-of-the-operator").await, 200);
    node.shutdown().await;

    // A token too short to be safe stops the start, naming the file.
    std::fs::write(&token_file, "short\n").unwrap();
    let refused = switchyard::Node::start(&manifest.load())
        .await
        .err()
        .unwrap();
    assert!(refused.to_string().contains("admin.token"), "{refused}");
    assert!(refused.to_string().contains("16"), "{refused}");
}

#[tokio::test]
async fn uploads_past_the_compile_limit_are_answered_429_before_their_body() {
    let manifest = TestManifest::new(&service("hello", "hello", &["GET /hello/{name}"], ""));
    let node = manifest.start().await;
    let token = std::fs::read_to_string(node.admin_token_file()).unwrap();
    let head = format!(
        "POST /services/hello HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\n\
         content-length: 100000\r\n\r\npartial",
        node.admin_addr(),
        token.trim()
    );
    // Two uploads whose bodies never finish hold both compile permits...
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(node.admin_addr())
            .await
            .unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        slow.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ... so a third is told to come back, at once.
    let third = send_bytes(
        node.admin_addr(),
        "POST",
        "/services/hello",
        hello_v2(),
        &[("authorization", &format!("Bearer {}", token.trim()))],
    )
    .await;
    assert_eq!(third.status, 429, "{}", third.body);
    assert_eq!(third.header("retry-after"), Some("1"));
    // Reads still answer; once the slow uploads go away, uploads do again.
    assert_eq!(admin_get(&node, "/services").await.status, 200);
    drop(slow);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = admin_post(&node, "/services/hello", hello_v2()).await;
    assert_eq!(status, 200, "{body}");
    node.shutdown().await;
}

#[tokio::test]
async fn an_admin_api_off_loopback_speaks_tls_with_the_nodes_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = switchyard::cert::generate_ca("test").unwrap();
    let node_cert = switchyard::cert::issue_node_cert(&ca, "edge").unwrap();
    for (file, text) in [
        ("ca.pem", &ca.cert),
        ("edge.pem", &node_cert.cert),
        ("edge.key", &node_cert.key),
    ] {
        std::fs::write(dir.path().join(file), text).unwrap();
    }
    let tls = format!(
        "tls = {{ ca = {:?}, cert = {:?}, key = {:?} }}",
        dir.path().join("ca.pem").display().to_string(),
        dir.path().join("edge.pem").display().to_string(),
        dir.path().join("edge.key").display().to_string(),
    );
    // Off loopback without TLS: refused by the check, with the key to set.
    let text = |node: &str| {
        format!(
            "[node]\n{node}\nhttp = \"127.0.0.1:0\"\nadmin = \"0.0.0.0:0\"\ndata_dir = \"data\"\n\n{}",
            service("hello", "hello", &["GET /hello/{name}"], "")
        )
    };
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, text("name = \"edge\"")).unwrap();
    let refused = switchyard::Manifest::load(&path).err().unwrap().to_string();
    assert!(refused.contains("only over TLS"), "{refused}");

    std::fs::write(&path, text(&format!("name = \"edge\"\n{tls}"))).unwrap();
    let node = switchyard::Node::start(&switchyard::Manifest::load(&path).unwrap())
        .await
        .unwrap();
    let port = node.admin_addr().port();
    let admin = format!("127.0.0.1:{port}");

    // Plain HTTP gets no answer from it.
    let mut plain = tokio::net::TcpStream::connect(&admin).await.unwrap();
    plain
        .write_all(format!("GET /health HTTP/1.1\r\nhost: {admin}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), plain.read_to_end(&mut answer)).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("200 OK"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // The CLI finds the token and the CA in the manifest and speaks TLS.
    let manifest_path = path.display().to_string();
    let status = switchyard_cli(&["status", &manifest_path, "--admin", &admin]).await;
    assert!(status.success, "{}{}", status.stdout, status.stderr);
    assert!(status.stdout.contains("node edge"), "{}", status.stdout);
    // A CA that did not sign the node is not trusted.
    let stranger = switchyard::cert::generate_ca("stranger").unwrap();
    std::fs::write(dir.path().join("stranger.pem"), &stranger.cert).unwrap();
    let stranger_ca = dir.path().join("stranger.pem").display().to_string();
    let distrusted = switchyard_cli(&[
        "status",
        &manifest_path,
        "--admin",
        &admin,
        "--ca",
        &stranger_ca,
    ])
    .await;
    assert!(!distrusted.success, "{}", distrusted.stdout);
    assert!(distrusted.stderr.contains("TLS"), "{}", distrusted.stderr);
    node.shutdown().await;
}

/// What wins between an admin swap and a later manifest edit: the swap stays through edits
/// of the service's settings, and an edit of its `component` replaces it, saying so.
#[tokio::test]
async fn an_admin_swap_survives_setting_edits_and_a_component_edit_says_it_replaces_it() {
    let text = |greeting: &str, component: &str| {
        format!(
            "[node]\nname = \"test\"\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
             data_dir = \"data\"\n\n[[service]]\nname = \"hello\"\nversion = \"1.0.0\"\n\
             component = {component:?}\nroutes = [\"GET /hello/{{name}}\"]\n\
             config = {{ greeting = \"{greeting}\" }}\n"
        )
    };
    let hello = guest("hello").display().to_string();
    let manifest = TestManifest::new("");
    manifest.edit(&text("Hi", &hello));
    let mut node = manifest.start().await;
    let (reports, mut reported) = tokio::sync::mpsc::unbounded_channel();
    node.watch_manifest(Some(reports)).unwrap();
    let http = node.http_addr();
    let (status, body) = admin_post(&node, "/services/hello", hello_v2()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(get(http, "/hello/ada").await.body, "Hello v2, ada!\n");

    // New settings apply to the swapped code: the swap stays.
    manifest.edit(&text("Hey", &hello));
    let report = crate::support::next_reload(&mut reported).await;
    assert_eq!(
        report.swapped,
        ["service `hello` (new settings)"],
        "{report:?}"
    );
    assert_eq!(get(http, "/hello/ada").await.body, "Hello v2, ada!\n");

    // A new component in the manifest replaces the upload, and the report says so. (A new
    // build of hello: the same code with a custom section appended.)
    let copy = manifest.dir.path().join("hello-rebuilt.wasm");
    let mut rebuilt = std::fs::read(guest("hello")).unwrap();
    rebuilt.extend_from_slice(&[0, 5, 4, b'b', b'u', b'm', b'p']);
    std::fs::write(&copy, rebuilt).unwrap();
    manifest.edit(&text("Hey", &copy.display().to_string()));
    let mut report = crate::support::next_reload(&mut reported).await;
    // A save can be seen twice; the second reload finds nothing new.
    while report == switchyard::node::ReloadReport::default() {
        report = crate::support::next_reload(&mut reported).await;
    }
    assert_eq!(report.swapped.len(), 1, "{report:?}");
    assert!(
        report.swapped[0].contains("swapped in through the admin API"),
        "{report:?}"
    );
    let reply = send(http, "GET", "/hello/ada", "").await;
    assert_eq!(reply.body, "Hey, ada!\n");
    node.shutdown().await;
}
