//! `switchyard new <name>`: a guest crate with a manifest that runs it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Where the SDK was when this binary was built (the repository's `sdk/`).
const BUILT_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk");

pub(crate) fn new_guest(name: &str, dir: &Path, sdk: Option<&Path>) -> Result<()> {
    // The manifest's own rule, so a scaffolded manifest always loads.
    switchyard::manifest::ServiceName::parse(name)
        .with_context(|| "`switchyard new` takes a service name")?;
    let sdk = match sdk {
        Some(path) => path.to_path_buf(),
        None => PathBuf::from(BUILT_SDK),
    };
    let sdk = sdk.canonicalize().with_context(|| {
        format!(
            "switchyard-sdk not found at {}: pass --sdk <path to the sdk/ directory>",
            sdk.display()
        )
    })?;
    if !sdk.join("Cargo.toml").is_file() {
        bail!(
            "{} has no Cargo.toml: pass --sdk <path to the sdk/ directory>",
            sdk.display()
        );
    }
    let root = dir.join(name);
    if root.exists() {
        bail!(
            "{} already exists: choose another name or --dir",
            root.display()
        );
    }
    let crate_file = name.replace('-', "_");
    let files = [
        ("Cargo.toml", cargo_toml(name, &sdk)),
        ("src/lib.rs", LIB_RS.replace("{type}", &type_name(name))),
        ("switchyard.toml", manifest(name, &crate_file)),
        (".gitignore", "target/\n.switchyard/\n".to_owned()),
    ];
    for (file, contents) in files {
        let path = root.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!(
        "created {root}\n\nnext:\n  build:  cargo build --release --target wasm32-wasip2 \
         (in {root})\n          or, in the Switchyard repository: cargo xtask build-guests \
         --path {root}\n  run:    switchyard run {root}/switchyard.toml\n  try:    curl \
         http://127.0.0.1:8080/{name}/world",
        root = root.display()
    );
    Ok(())
}

fn type_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn cargo_toml(name: &str, sdk: &Path) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
switchyard-sdk = {{ path = {sdk:?} }}

# A crate of its own, not part of any enclosing workspace.
[workspace]

[profile.release]
panic = "abort"
opt-level = "s"
lto = true
codegen-units = 1
"#,
        sdk = sdk.display().to_string()
    )
}

const LIB_RS: &str = r#"use switchyard_sdk::{Error, Request, Response, Service, config};

struct {type};

impl Service for {type} {
    fn handle(req: Request) -> Result<Response, Error> {
        let greeting = config::get("greeting").unwrap_or_else(|| "Hello".into());
        let name = req.param("name").unwrap_or("world");
        Ok(Response::text(format!("{greeting}, {name}!\n")))
    }
}

switchyard_sdk::export!({type});
"#;

fn manifest(name: &str, crate_file: &str) -> String {
    format!(
        r#"[node]
name = "dev"
http = "127.0.0.1:8080"
admin = "127.0.0.1:9090"

[[service]]
name = "{name}"
version = "0.1.0"
component = "target/wasm32-wasip2/release/{crate_file}.wasm"
routes = ["GET /{name}/{{name}}"]
config = {{ greeting = "Hello" }}
"#
    )
}
