use std::path::PathBuf;

use super::{Manifest, ManifestError, TelemetrySpec};

/// A manifest next to a real (empty) component file, so `component` resolves.
fn parse(body: &str) -> (Result<Manifest, ManifestError>, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "switchyard-manifest-test-{}-{}",
        std::process::id(),
        body.len()
    ));
    std::fs::create_dir_all(&dir).ok();
    std::fs::write(dir.join("svc.wasm"), b"").ok();
    let path = dir.join("switchyard.toml");
    (Manifest::parse(body, &path), path)
}

const GOOD: &str = r#"
[node]
name = "edge-1"
http = "127.0.0.1:0"
admin = "127.0.0.1:0"

[[service]]
name = "hello"
version = "1.2.3"
component = "svc.wasm"
routes = ["GET /hello/{name}", "post /echo"]
timeout_ms = 250
config = { greeting = "Hi" }
"#;

#[test]
fn a_good_manifest_resolves_paths_and_defaults() {
    let (manifest, path) = parse(GOOD);
    let manifest = manifest.unwrap_or_else(|err| panic!("{err}"));
    let service = &manifest.services[0];
    assert_eq!(manifest.node.name, "edge-1");
    assert_eq!(service.version, semver::Version::new(1, 2, 3));
    assert_eq!(service.component, path.with_file_name("svc.wasm"));
    assert_eq!(service.routes[1].method, "POST");
    assert_eq!(service.timeout.as_millis(), 250);
    assert_eq!(service.max_instances, super::defaults::MAX_INSTANCES);
    assert_eq!(service.memory_limit_bytes, 64 * 1024 * 1024);
    assert_eq!(
        service.config.get("greeting").map(String::as_str),
        Some("Hi")
    );
    assert_eq!(manifest.node.data_dir, path.with_file_name(".switchyard"));
}

fn error_of(body: &str) -> String {
    match parse(body).0 {
        Ok(_) => panic!("manifest was accepted:\n{body}"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn an_unknown_key_names_file_line_and_column() {
    let err = error_of(&GOOD.replace("timeout_ms = 250", "timeout_msec = 250"));
    assert!(err.contains("switchyard.toml:12:1"), "{err}");
    assert!(err.contains("unknown field `timeout_msec`"), "{err}");
}

#[test]
fn a_wrong_type_names_file_line_and_column() {
    let err = error_of(&GOOD.replace("timeout_ms = 250", "timeout_ms = \"fast\""));
    assert!(err.contains("switchyard.toml:12:14"), "{err}");
    assert!(err.contains("invalid type"), "{err}");
}

#[test]
fn a_missing_component_names_the_path() {
    let err = error_of(&GOOD.replace("svc.wasm", "nope/missing.wasm"));
    assert!(err.contains("nope/missing.wasm"), "{err}");
    assert!(err.contains("does not exist"), "{err}");
    assert!(err.contains(":10:13"), "{err}");
}

#[test]
fn a_duplicate_route_names_both_places() {
    let body = format!(
        "{GOOD}\n[[service]]\nname = \"other\"\nversion = \"1.0.0\"\ncomponent = \"svc.wasm\"\n\
         routes = [\"GET /hello/{{who}}\"]\n"
    );
    let err = error_of(&body);
    assert!(
        err.contains("collides with route `GET /hello/{name}`"),
        "{err}"
    );
    assert!(err.contains(":19:11"), "{err}");
    assert!(err.contains(":11:11"), "{err}");
}

#[test]
fn a_wildcard_method_collides_with_every_method() {
    let err = error_of(&GOOD.replace("\"post /echo\"", "\"* /hello/{x}\""));
    assert!(err.contains("collides"), "{err}");
}

#[test]
fn bad_values_say_what_would_be_accepted() {
    for (from, to, expect) in [
        ("version = \"1.2.3\"", "version = \"1.2\"", "not semver"),
        (
            "http = \"127.0.0.1:0\"",
            "http = \"localhost\"",
            "not a socket address",
        ),
        ("GET /hello/{name}", "FETCH /hello", "unknown method"),
        ("GET /hello/{name}", "GET hello", "must start with `/`"),
        (
            "GET /hello/{name}",
            "GET /hello/x{name}",
            "not a valid parameter",
        ),
        ("timeout_ms = 250", "timeout_ms = 0", "out of range"),
        ("name = \"hello\"", "name = \"Hello World\"", "not valid"),
    ] {
        let err = error_of(&GOOD.replace(from, to));
        assert!(err.contains(expect), "{to}: {err}");
        assert!(err.contains("hint:"), "{to}: {err}");
    }
}

#[test]
fn the_same_port_for_ingress_and_admin_is_refused() {
    let err = error_of(
        &GOOD
            .replace("http = \"127.0.0.1:0\"", "http = \"127.0.0.1:7000\"")
            .replace("admin = \"127.0.0.1:0\"", "admin = \"127.0.0.1:7000\""),
    );
    assert!(err.contains("both 127.0.0.1:7000"), "{err}");
}

#[test]
fn balancing_is_per_called_service_and_strategies_are_checked() {
    let (manifest, _) = parse(&format!(
        "{GOOD}\n[balance.inventory]\nstrategy = \"power-of-two-choices\"\nprefer_local = false\n"
    ));
    let manifest = manifest.unwrap_or_else(|err| panic!("{err}"));
    let spec = manifest
        .balance
        .get("inventory")
        .copied()
        .unwrap_or_default();
    assert_eq!(spec.strategy, super::Strategy::PowerOfTwoChoices);
    assert!(!spec.prefer_local);
    assert!(
        super::BalanceSpec::default().prefer_local,
        "local wins unless told otherwise"
    );
    let err = error_of(&format!(
        "{GOOD}\n[balance.inventory]\nstrategy = \"random\"\n"
    ));
    assert!(
        err.contains("unknown variant `random`") && err.contains(":16:12"),
        "{err}"
    );
}

#[test]
fn discovery_backends_are_checked() {
    let etcd = "[node]\nquic = \"127.0.0.1:7000\"\ndiscovery = { backend = \"etcd\", \
                endpoints = [\"http://127.0.0.1:2379\"], prefix = \"/prod/\" }\n";
    let (manifest, _) = parse(etcd);
    let manifest = manifest.unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(
        manifest.node.discovery,
        super::DiscoverySpec::Etcd {
            endpoints: vec!["127.0.0.1:2379".into()],
            prefix: "/prod".into(),
            tls: None,
        }
    );
    let https = "[node]\nquic = \"127.0.0.1:7000\"\ndiscovery = { backend = \"etcd\", \
                 endpoints = [\"https://etcd-1:2379\"], tls = { ca = \"ca.pem\", \
                 cert = \"n.pem\", key = \"n.key\" } }\n";
    let (manifest, path) = parse(https);
    let manifest = manifest.unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(
        manifest.node.discovery,
        super::DiscoverySpec::Etcd {
            endpoints: vec!["etcd-1:2379".into()],
            prefix: "/switchyard".into(),
            tls: Some(super::EtcdTlsSpec {
                ca: path.with_file_name("ca.pem"),
                client: Some((path.with_file_name("n.pem"), path.with_file_name("n.key"))),
            }),
        }
    );
    for (body, expected) in [
        (
            "[node]\nquic = \"127.0.0.1:7000\"\ndiscovery = { backend = \"consul\" }\n",
            "unknown discovery backend \"consul\"",
        ),
        (
            "[node]\nquic = \"127.0.0.1:7000\"\ndiscovery = { backend = \"etcd\" }\n",
            "needs at least one endpoint",
        ),
        (
            "[node]\nquic = \"127.0.0.1:7000\"\ndiscovery = { backend = \"etcd\", \
             endpoints = [\"127.0.0.1:2379\"] }\n",
            "is not http://HOST:PORT",
        ),
        (
            "[node]\ndiscovery = { backend = \"etcd\", endpoints = [\"http://a:1\"] }\n",
            "needs `node.quic`",
        ),
        (
            "[node]\nquic = \"127.0.0.1:7000\"\ndiscovery = { backend = \"etcd\", \
             endpoints = [\"https://a:1\"] }\n",
            "is https, but [node.discovery] has no `tls`",
        ),
        (
            "[node]\nquic = \"127.0.0.1:7000\"\ndiscovery = { backend = \"etcd\", \
             endpoints = [\"http://a:1\"], tls = { ca = \"ca.pem\" } }\n",
            "with `tls` every endpoint is https",
        ),
        (
            "[node]\nquic = \"127.0.0.1:7000\"\ndiscovery = { backend = \"etcd\", \
             endpoints = [\"https://a:1\"], tls = { ca = \"ca.pem\", cert = \"n.pem\" } }\n",
            "names a client certificate or key but not both",
        ),
        (
            "[node]\nquic = \"127.0.0.1:7000\"\ndiscovery = { backend = \"embedded\", \
             tls = { ca = \"ca.pem\" } }\n",
            "is for the etcd backend (peers use [node.tls])",
        ),
        (
            "[node]\nquic = \"127.0.0.1:7000\"\nseeds = [\"127.0.0.1:7001\"]\n\
             discovery = { backend = \"etcd\", endpoints = [\"http://a:1\"] }\n",
            "`node.seeds` is for the embedded discovery backend",
        ),
        (
            "[node]\nquic = \"0.0.0.0:7000\"\n",
            "not an address other nodes can reach",
        ),
        (
            "[node]\nadvertise = \"10.0.0.5:7000\"\n",
            "`node.advertise` needs `node.quic`",
        ),
        (
            "[node]\nquic = \"0.0.0.0:7000\"\nadvertise = \"0.0.0.0:7000\"\n",
            "`node.advertise` = 0.0.0.0:7000 is not an address other nodes can reach",
        ),
    ] {
        let message = error_of(body);
        assert!(message.contains(expected), "{body}\n=> {message}");
        assert!(message.contains("switchyard.toml:"), "{message}");
    }
}

#[test]
fn a_queue_takes_defaults_and_a_binding_to_it() {
    let body = format!(
        "{GOOD}\n[[queue]]\nname = \"jobs\"\nsubscriber = \"hello\"\nmax_attempts = 3\n\n\
         [[policy]]\nname = \"retry\"\ncomponent = \"svc.wasm\"\n\n\
         [[bind]]\npolicies = [\"retry\"]\nqueue = \"jobs\"\n"
    );
    let (manifest, _) = parse(&body);
    let manifest = manifest.unwrap_or_else(|err| panic!("{err}"));
    let queue = &manifest.queues[0];
    assert_eq!(queue.subscriber, "hello");
    assert_eq!(queue.max_attempts, 3);
    assert_eq!(queue.concurrency, super::defaults::QUEUE_CONCURRENCY);
    assert_eq!(queue.max_depth, super::defaults::QUEUE_MAX_DEPTH);
    assert_eq!(
        queue.max_dead_bytes as u64,
        super::defaults::QUEUE_MAX_DEAD_MB * 1024 * 1024
    );
    assert_eq!(
        manifest.bindings[0].scope,
        super::BindScope::Queue("jobs".into())
    );
}

#[test]
fn a_binding_sets_the_reserve_of_calls_and_only_of_calls() {
    let bind = |lines: &str| {
        format!(
            "{GOOD}\n[[queue]]\nname = \"jobs\"\nsubscriber = \"hello\"\n\n\
             [[policy]]\nname = \"retry\"\ncomponent = \"svc.wasm\"\n\n[[bind]]\n{lines}\n"
        )
    };
    let (manifest, _) = parse(&bind("calls_to = \"inventory\"\nreserve_ms = 80"));
    let manifest = manifest.unwrap_or_else(|err| panic!("{err}"));
    let binding = &manifest.bindings[0];
    assert_eq!(binding.reserve, Some(std::time::Duration::from_millis(80)));
    assert!(binding.policies.is_empty(), "a reserve needs no policy");
    let (manifest, _) = parse(&bind("policies = [\"retry\"]\noutgoing_from = \"hello\""));
    let manifest = manifest.unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(manifest.bindings[0].reserve, None);
    let err = error_of(&bind(
        "policies = [\"retry\"]\nqueue = \"jobs\"\nreserve_ms = 5",
    ));
    assert!(err.contains("a queue's deliveries have no caller"), "{err}");
    assert!(err.contains("switchyard.toml:"), "{err}");
    let err = error_of(&bind("calls_to = \"inventory\""));
    assert!(err.contains("[[bind]] lists no policies"), "{err}");
    let err = error_of(&bind("calls_to = \"inventory\"\nreserve_ms = -1"));
    assert!(err.contains("expected u64"), "{err}");
}

#[test]
fn bad_queues_say_what_to_fix() {
    let queue = |lines: &str| format!("{GOOD}\n[[queue]]\nname = \"jobs\"\n{lines}\n");
    let err = error_of(&queue("subscriber = \"nobody\""));
    assert!(
        err.contains("subscriber `nobody` is not a service"),
        "{err}"
    );
    assert!(err.contains("hello"), "{err}");
    let err = error_of(&queue("subscriber = \"hello\"\nconcurrency = 0"));
    assert!(err.contains("`concurrency` must be at least 1"), "{err}");
    let err = error_of(&queue("subscriber = \"hello\"\nmax_depth = 0"));
    assert!(err.contains("`max_depth` must be at least 1"), "{err}");
    let err = error_of(&queue("subscriber = \"hello\"\nmax_dead_mb = 0"));
    assert!(err.contains("max_dead_mb"), "{err}");
    let err = error_of(&queue("subscriber = \"hello\"\nmax_causation_depth = 0"));
    assert!(err.contains("max_causation_depth"), "{err}");
    let err = error_of(&queue("subscriber = \"hello\"\nordered_by_key = \"yes\""));
    assert!(
        err.contains("switchyard.toml:18:") && err.contains("expected a boolean"),
        "{err}"
    );
    let err = error_of(&format!(
        "{}\n[[queue]]\nname = \"jobs\"\nsubscriber = \"hello\"\n",
        queue("subscriber = \"hello\"")
    ));
    assert!(err.contains("queue `jobs` is declared twice"), "{err}");
    let err = error_of(&format!(
        "{}\n[[policy]]\nname = \"retry\"\ncomponent = \"svc.wasm\"\n\n\
         [[bind]]\npolicies = [\"retry\"]\nqueue = \"mail\"\n",
        queue("subscriber = \"hello\"")
    ));
    assert!(err.contains("`queue` names `mail`"), "{err}");
    assert!(err.contains("declared: jobs"), "{err}");
}

#[test]
fn a_node_bound_to_every_interface_advertises_the_address_peers_dial() {
    let body = GOOD.replace(
        "admin = \"127.0.0.1:0\"",
        "admin = \"127.0.0.1:0\"\nquic = \"0.0.0.0:7000\"\nadvertise = \"10.0.0.5:0\"",
    );
    let (manifest, _) = parse(&body);
    let manifest = manifest.unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(manifest.node.quic, "0.0.0.0:7000".parse().ok());
    assert_eq!(manifest.node.advertise, "10.0.0.5:0".parse().ok());
}

#[test]
fn one_name_rule_for_the_manifest_and_the_scaffold() {
    use super::ServiceName;
    for good in ["a", "inventory-api", "a1-b2"] {
        assert!(ServiceName::parse(good).is_ok(), "{good}");
    }
    let long = "a".repeat(64);
    for bad in ["", "abc-", "-abc", "1abc", "Abc", "a_b", long.as_str()] {
        assert!(ServiceName::parse(bad).is_err(), "{bad:?}");
    }
    // What `switchyard new abc-` refuses, a manifest refuses too (it used to scaffold one
    // that `switchyard run` then refused).
    let (manifest, _) = parse(&GOOD.replace("name = \"hello\"", "name = \"abc-\""));
    assert!(
        manifest.is_err_and(|err| err.to_string().contains("is not valid")),
        "a trailing hyphen passed"
    );
}

#[test]
fn an_admin_api_off_loopback_needs_tls() {
    let err = error_of(&GOOD.replace("admin = \"127.0.0.1:0\"", "admin = \"0.0.0.0:9090\""));
    assert!(err.contains("switchyard.toml:5:9"), "{err}");
    assert!(err.contains("only over TLS"), "{err}");
    assert!(err.contains("[node.tls]"), "{err}");
    // Any loopback address is fine without it.
    let (loopback, _) = parse(&GOOD.replace("admin = \"127.0.0.1:0\"", "admin = \"127.0.0.2:0\""));
    loopback.unwrap_or_else(|err| panic!("{err}"));
}

#[test]
fn the_admin_token_file_resolves_against_the_manifest() {
    let (manifest, path) = parse(&GOOD.replace(
        "admin = \"127.0.0.1:0\"",
        "admin = \"127.0.0.1:0\"\nadmin_token_file = \"secrets/admin.token\"",
    ));
    let manifest = manifest.unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(
        manifest.node.admin_token_file,
        Some(path.with_file_name("secrets/admin.token"))
    );
}

#[test]
fn allow_lists_take_service_names_and_the_ingress_where_it_fits() {
    let (manifest, _) = parse(&format!(
        "{GOOD}may_call = [\"inventory\"]\naccepts_from = [\"shop\", \"@ingress\"]\n"
    ));
    let manifest = manifest.unwrap_or_else(|err| panic!("{err}"));
    let hello = &manifest.services[0];
    assert_eq!(hello.may_call, Some(vec!["inventory".to_owned()]));
    assert_eq!(
        hello.accepts_from,
        Some(vec!["shop".to_owned(), "@ingress".to_owned()])
    );
    let err = error_of(&format!("{GOOD}may_call = [\"@ingress\"]\n"));
    assert!(
        err.contains("may_call entry \"@ingress\" is not a service name"),
        "{err}"
    );
    let err = error_of(&format!("{GOOD}accepts_from = [\"Shop Front\"]\n"));
    assert!(err.contains("or \"@ingress\" for HTTP clients"), "{err}");
    assert!(err.contains("switchyard.toml:"), "{err}");
}

#[test]
fn the_messaging_backend_is_checked() {
    let (manifest, _) = parse("[messaging]\nbackend = \"embedded\"\n");
    let manifest = manifest.unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(manifest.messaging, super::MessagingSpec::Embedded);
    let (manifest, path) = parse("");
    assert_eq!(
        manifest.map(|m| m.messaging).ok(),
        Some(super::MessagingSpec::Embedded)
    );
    drop(path);
    let password = std::env::temp_dir().join(format!(
        "switchyard-manifest-test-{}.password",
        std::process::id()
    ));
    std::fs::write(&password, "secret").ok();
    let (manifest, path) = parse(&format!(
        "[messaging]\nbackend = \"nats\"\nservers = [\"nats://10.0.0.1:4222\", \
         \"tls://nats-2:4222\"]\nuser = \"orders\"\npassword_file = {:?}\n\
         tls = {{ ca = \"ca.pem\" }}\nreplicas = 3\n",
        password.display().to_string()
    ));
    let manifest = manifest.unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(
        manifest.messaging,
        super::MessagingSpec::Nats(super::NatsSpec {
            servers: vec!["nats://10.0.0.1:4222".into(), "tls://nats-2:4222".into()],
            auth: super::NatsAuth::UserPassword {
                user: "orders".into(),
                password_file: password.clone(),
            },
            tls: Some(super::NatsTlsSpec {
                ca: Some(path.with_file_name("ca.pem")),
                client: None,
            }),
            replicas: 3,
        })
    );
    for (body, expected) in [
        (
            "backend = \"kafka\"\n",
            "unknown messaging backend \"kafka\"",
        ),
        ("backend = \"nats\"\n", "needs at least one server"),
        (
            "backend = \"nats\"\nservers = [\"127.0.0.1:4222\"]\n",
            "is not nats://HOST:PORT",
        ),
        (
            "backend = \"nats\"\nservers = [\"nats://u:p@a:4222\"]\n",
            "not in the URL",
        ),
        (
            "backend = \"nats\"\nservers = [\"tls://a:4222\"]\n",
            "is tls://, but [messaging] has no `tls`",
        ),
        (
            "backend = \"nats\"\nservers = [\"nats://a:4222\"]\ncredentials = \"none.creds\"\n",
            "`credentials` file",
        ),
        (
            "backend = \"nats\"\nservers = [\"nats://a:4222\"]\nuser = \"x\"\n",
            "has no `password_file`",
        ),
        (
            "backend = \"nats\"\nservers = [\"nats://a:4222\"]\nuser = \"x\"\n\
             password_file = \"nats.password\"\ntoken_file = \"nats.password\"\n",
            "more than one way to authenticate",
        ),
        (
            "backend = \"nats\"\nservers = [\"nats://a:4222\"]\nreplicas = 7\n",
            "replicas = 7 is out of range",
        ),
        (
            "backend = \"nats\"\nservers = [\"nats://a:4222\"]\ntls = { cert = \"c.pem\" }\n",
            "names a client certificate or key but not both",
        ),
        (
            "backend = \"embedded\"\nservers = [\"nats://a:4222\"]\n",
            "`servers` in [messaging] is for the NATS backend",
        ),
    ] {
        let body = format!("[messaging]\n{body}");
        let err = error_of(&body);
        assert!(err.contains(expected), "{body}\n=> {err}");
        assert!(err.contains("switchyard.toml:"), "{err}");
    }
}

#[test]
fn telemetry_is_checked_with_its_place() {
    let (manifest, _) = parse("");
    let defaults = manifest
        .map(|m| m.telemetry)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(defaults, TelemetrySpec::default());
    assert!(defaults.metrics && defaults.metrics_addr.is_none());
    let (manifest, _) = parse(&format!(
        "{GOOD}[telemetry]\nmetrics_addr = \"127.0.0.1:9464\"\nrequest_log = 0.25\n\
         request_log_off = [\"hello\"]\n"
    ));
    let telemetry = manifest
        .map(|m| m.telemetry)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(telemetry.metrics_addr, "127.0.0.1:9464".parse().ok());
    assert_eq!(telemetry.request_log, 0.25);
    assert_eq!(telemetry.request_log_off, ["hello"]);
    for (body, says) in [
        ("metrics_addr = \"nowhere\"", "is not a socket address"),
        (
            "metrics = false\nmetrics_addr = \"127.0.0.1:9464\"",
            "while metrics = false",
        ),
        ("metric = true", "unknown field"),
        ("request_log = 1.5", "is not a share between 0 and 1"),
        ("request_log_off = [\"nobody\"]", "which is no [[service]]"),
    ] {
        let err = error_of(&format!("[telemetry]\n{body}\n"));
        assert!(
            err.contains(says) && err.contains("switchyard.toml:"),
            "{body}: {err}"
        );
    }
}

#[test]
fn outbound_hosts_are_patterns_and_their_ca_must_hold_certificates() {
    let (manifest, _) = parse(&format!(
        "{GOOD}allowed_outbound_hosts = [\"https://api.example.com\", \"http://*.internal:*\", \
         \"https://localhost:8443\"]\n"
    ));
    let manifest = manifest.unwrap_or_else(|err| panic!("{err}"));
    let outbound = &manifest.services[0].outbound;
    assert!(outbound.allows(true, "api.example.com", 443));
    assert!(outbound.allows(true, "API.Example.com", 443));
    assert!(!outbound.allows(false, "api.example.com", 80), "scheme");
    assert!(!outbound.allows(true, "api.example.com", 8443), "port");
    assert!(!outbound.allows(true, "evil-api.example.com", 443));
    assert!(outbound.allows(false, "db.internal", 5984));
    assert!(outbound.allows(false, "a.b.internal", 1));
    assert!(
        !outbound.allows(false, "internal", 80),
        "a subdomain, not the domain"
    );
    assert!(outbound.allows(true, "localhost", 8443));
    assert!(!outbound.allows(true, "localhost", 443));

    for (entry, says) in [
        ("api.example.com", "has no scheme"),
        ("ftp://files.example.com", "only http and https"),
        ("https://api.example.com/v1", "has a path"),
        ("https://api.example.com:http", "not a number or `*`"),
        ("https://exa mple.com", "not a host name"),
    ] {
        let err = error_of(&format!("{GOOD}allowed_outbound_hosts = [{entry:?}]\n"));
        assert!(
            err.contains(says) && err.contains("switchyard.toml:"),
            "{entry}: {err}"
        );
    }
    let err = error_of(&format!("{GOOD}outbound_ca = \"nowhere.pem\"\n"));
    assert!(err.contains("no allowed_outbound_hosts"), "{err}");
    let err = error_of(&format!(
        "{GOOD}allowed_outbound_hosts = [\"https://a.example\"]\noutbound_ca = \"nowhere.pem\"\n"
    ));
    assert!(err.contains("does not exist"), "{err}");
    let err = error_of(&format!(
        "{GOOD}allowed_outbound_hosts = [\"https://a.example\"]\noutbound_ca = \"svc.wasm\"\n"
    ));
    assert!(err.contains("holds no certificate"), "{err}");
}
