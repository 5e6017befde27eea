//! The `switchyard` binary on bad input: a clear error, a non-zero exit, nothing else.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support::{TestManifest, guest, service, switchyard_bin};

fn switchyard(args: &[&str], manifest: &Path) -> Output {
    Command::new(switchyard_bin())
        .args(args)
        .arg(manifest)
        .env("SWITCHYARD_LOG", "warn")
        .output()
        .unwrap()
}

/// Runs `check` and `run` on the manifest; both must fail with `expect` in stderr and must
/// not create the data directory's compiled artifacts for anything.
fn refused(manifest: &TestManifest, expect: &[&str]) {
    for command in ["check", "run"] {
        let started = Instant::now();
        let out = switchyard(&[command], &manifest.path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "`{command}` accepted it:\n{stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "`{command}` took too long"
        );
        for needle in expect {
            assert!(
                stderr.contains(needle),
                "`{command}` stderr lacks {needle:?}:\n{stderr}"
            );
        }
    }
}

fn with_component(bytes: &[u8]) -> TestManifest {
    let manifest = TestManifest::new("");
    let component = manifest.dir.path().join("bad.wasm");
    std::fs::write(&component, bytes).unwrap();
    std::fs::write(
        &manifest.path,
        "[node]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n[[service]]\nname = \"bad\"\n\
         version = \"1.0.0\"\ncomponent = \"bad.wasm\"\nroutes = [\"GET /bad\"]\n",
    )
    .unwrap();
    manifest
}

#[test]
fn check_accepts_a_good_manifest() {
    let manifest = TestManifest::new(&service("hello", "hello", &["GET /hello/{name}"], ""));
    let out = switchyard(&["check"], &manifest.path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok:") && stdout.contains("1 service(s), 1 route(s)"),
        "{stdout}"
    );
}

#[test]
fn an_unknown_key_is_refused_with_file_line_and_column() {
    let manifest = TestManifest::new(&service("hello", "hello", &["GET /x"], "colour = \"blue\""));
    refused(
        &manifest,
        &["switchyard.toml:12:1", "unknown field `colour`"],
    );
}

#[test]
fn a_wrong_type_is_refused_with_file_line_and_column() {
    let manifest = TestManifest::new(&service(
        "hello",
        "hello",
        &["GET /x"],
        "max_instances = \"lots\"",
    ));
    refused(
        &manifest,
        &["switchyard.toml:12:17", "invalid type: string \"lots\""],
    );
}

#[test]
fn a_missing_component_is_refused_naming_the_path() {
    let manifest = TestManifest::new(
        "[[service]]\nname = \"gone\"\nversion = \"1.0.0\"\ncomponent = \"nowhere/gone.wasm\"\n\
         routes = [\"GET /gone\"]\n",
    );
    refused(
        &manifest,
        &[
            "nowhere/gone.wasm",
            "does not exist",
            "switchyard.toml:10:13",
        ],
    );
}

#[test]
fn bytes_that_are_not_wasm_are_refused() {
    refused(
        &with_component(b"#!/bin/sh\necho hi\n"),
        &["bad.wasm is not a WebAssembly file"],
    );
}

#[test]
fn a_core_module_is_refused_as_not_a_component() {
    let module = wat::parse_str("(module (func (export \"handle\")))").unwrap();
    refused(
        &with_component(&module),
        &["is a core WebAssembly module, not a component"],
    );
}

#[test]
fn a_component_with_an_unknown_import_is_refused_naming_it() {
    let component = wat::parse_str(
        "(component (import \"acme:billing/charge@1.0.0\" (instance (export \"charge\" (func)))))",
    )
    .unwrap();
    refused(
        &with_component(&component),
        &[
            "does not fit the `switchyard:runtime/service` world",
            "acme:billing/charge@1.0.0",
        ],
    );
}

#[test]
fn a_component_without_the_handler_export_is_refused_naming_it() {
    let component = wat::parse_str("(component)").unwrap();
    refused(
        &with_component(&component),
        &["does not fit", "switchyard:runtime/handler"],
    );
}

#[test]
fn a_duplicate_route_is_refused() {
    let manifest = TestManifest::new(&format!(
        "{}{}",
        service("one", "hello", &["GET /hello/{name}"], ""),
        service("two", "hello", &["GET /hello/{other}"], "")
    ));
    refused(
        &manifest,
        &["collides with route `GET /hello/{name}` of service `one`"],
    );
}

#[test]
fn an_address_in_use_is_refused_naming_it_and_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let manifest = TestManifest::new(&service("hello", "hello", &["GET /x"], ""));
    let text = std::fs::read_to_string(&manifest.path).unwrap().replacen(
        "http = \"127.0.0.1:0\"",
        &format!("http = \"{addr}\""),
        1,
    );
    std::fs::write(&manifest.path, text).unwrap();
    let started = Instant::now();
    let out = switchyard(&["run"], &manifest.path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr} (`node.http`")),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // Nothing was compiled: the address was checked before any work.
    assert!(!manifest.dir.path().join("data/compiled").exists());
}

#[test]
fn the_hello_guest_path_exists() {
    assert!(guest("hello").is_file());
}

#[tokio::test]
async fn status_shows_a_running_nodes_services() {
    let manifest = TestManifest::new(&service("hello", "hello", &["GET /hello/{name}"], ""));
    let node = manifest.start().await;
    crate::support::get(node.http_addr(), "/hello/x").await;
    let token_file = node.admin_token_file().display().to_string();
    let admin = node.admin_addr().to_string();
    let args = ["status", "--admin", &admin, "--token-file", &token_file];
    let status = crate::support::switchyard_cli(&args).await;
    let stdout = status.stdout;
    assert!(status.success, "{}", status.stderr);
    assert!(stdout.contains("node test"), "{stdout}");
    let hello = stdout
        .lines()
        .find(|line| line.starts_with("hello"))
        .unwrap_or_default();
    assert!(
        hello.contains("1.0.0") && hello.split_whitespace().nth(3) == Some("1"),
        "{stdout}"
    );
    node.shutdown().await;
    let out = std::process::Command::new(switchyard_bin())
        .args(["status", "--admin", &node_addr_gone()])
        .env("SWITCHYARD_ADMIN_TOKEN", "any-token-of-enough-length")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node answers"));
}

fn node_addr_gone() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

#[test]
fn certificates_are_valid_for_the_days_asked_and_a_year_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().display().to_string();
    let run = |args: &[&str]| {
        let output = Command::new(switchyard_bin()).args(args).output().unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(&["cert", "ca", "--out", &out, "--days", "30"]);
    run(&[
        "cert", "node", "edge", "--ca-dir", &out, "--out", &out, "--days", "2",
    ]);
    run(&["cert", "node", "core", "--ca-dir", &out, "--out", &out]);
    let days_valid = |file: &str| {
        let pem = std::fs::read(dir.path().join(file)).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let cert = pem.parse_x509().unwrap();
        let validity = cert.validity();
        (validity.not_after.timestamp() - validity.not_before.timestamp()) as f64 / 86_400.0
    };
    // Each is valid from an hour ago (clocks differ a little).
    let hour = 1.0 / 24.0;
    assert_eq!(days_valid("ca.pem"), 30.0 + hour);
    assert_eq!(days_valid("edge.pem"), 2.0 + hour);
    assert_eq!(days_valid("core.pem"), 365.0 + hour);
}

/// `check` and `run` accept and refuse the same manifests: each case goes through
/// `Manifest::load` + `node::check` (what `switchyard check` runs) and `Node::start` (what
/// `switchyard run` runs), and a refusal names its place in the file.
#[tokio::test]
async fn check_and_run_accept_and_refuse_the_same_manifests() {
    use crate::support::{TestManifest, service};
    let cases: &[(&str, &[&str], bool)] = &[
        ("hello", &["GET /hello/{name}"], true),
        ("hello", &["GET /files/{*rest}"], true),
        ("hello", &["* /", "* /{*rest}"], true),
        ("hello", &["GET /hello/{name}", "GET /hello/{who}"], false),
        ("hello", &["GET /files/{*rest}/tail"], false),
        ("hello", &["GET /files/{a}{b}"], false),
        (
            "hello",
            &["GET /x/{id}", "GET /x/{id}/y", "GET /x/me"],
            true,
        ),
        ("hello", &["GET /a/{x}/b", "GET /a/{y}/c"], true),
        ("hello", &["GET /{*rest}", "GET /{name}"], false),
        (
            "hello",
            &["GET /hello/{na-me}", "GET /hello/{name}x"],
            false,
        ),
        ("hello", &["GET hello"], false),
    ];
    for (service_name, routes, good) in cases {
        let manifest = TestManifest::new(&service(service_name, "hello", routes, ""));
        let checked = switchyard::Manifest::load(&manifest.path)
            .map_err(|err| err.to_string())
            .and_then(|loaded| {
                switchyard::node::check(&loaded)
                    .map(drop)
                    .map_err(|err| err.to_string())
            });
        let started = match switchyard::Manifest::load(&manifest.path) {
            Ok(loaded) => match switchyard::Node::start(&loaded).await {
                Ok(node) => {
                    node.shutdown().await;
                    Ok(())
                }
                Err(err) => Err(err.to_string()),
            },
            Err(err) => Err(err.to_string()),
        };
        assert_eq!(
            checked.is_ok(),
            started.is_ok(),
            "{routes:?}: check says {checked:?}, run says {started:?}"
        );
        assert_eq!(checked.is_ok(), *good, "{routes:?}: {checked:?}");
        if let Err(refused) = checked {
            assert!(
                refused.contains("switchyard.toml:"),
                "{routes:?}: {refused}"
            );
        }
    }
}
