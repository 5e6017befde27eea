//! Guest projects: `switchyard new` scaffolds one (Rust, Python or JavaScript) with a manifest
//! that runs it, `switchyard build` turns it into a component, `switchyard dev` keeps a node
//! serving its latest build. What they share (the SDK and WIT, the build cache, the pinned
//! Python and JS tools) lives in Switchyard's home: see [`home`].

mod build;
mod home;

use std::path::Path;

use anyhow::{Context, Result, bail};

pub(crate) use build::{Lang, Project, build};
pub(crate) use home::Home;

pub(crate) fn new_guest(name: &str, dir: &Path, lang: Lang, sdk: Option<&Path>) -> Result<()> {
    // The manifest's own rule, so a scaffolded manifest always loads.
    switchyard::manifest::ServiceName::parse(name)
        .with_context(|| "`switchyard new` takes a service name")?;
    let root = dir.join(name);
    if root.exists() {
        bail!(
            "{} already exists: choose another name or --dir",
            root.display()
        );
    }
    let files = match lang {
        Lang::Rust => {
            let sdk = match sdk {
                Some(path) => {
                    let sdk = path
                        .canonicalize()
                        .with_context(|| format!("--sdk {}: no such directory", path.display()))?;
                    if !sdk.join("Cargo.toml").is_file() {
                        bail!(
                            "--sdk {} has no Cargo.toml: pass the switchyard-sdk crate's directory",
                            sdk.display()
                        );
                    }
                    sdk
                }
                None => Home::locate()?.sdk()?.crate_dir,
            };
            vec![
                ("Cargo.toml", cargo_toml(name, &sdk)),
                ("src/lib.rs", LIB_RS.replace("{type}", &type_name(name))),
                ("switchyard.toml", manifest(name, RUST_ROUTES, "")),
                (".gitignore", "target/\nbuild/\n.switchyard/\n".to_owned()),
            ]
        }
        Lang::Python | Lang::Js => {
            let (project_file, project, app_file, app, ignored) = match lang {
                Lang::Python => (
                    "pyproject.toml",
                    PYPROJECT,
                    "app.py",
                    PYTHON_APP,
                    "__pycache__/",
                ),
                _ => (
                    "package.json",
                    PACKAGE_JSON,
                    "app.js",
                    JS_APP,
                    "node_modules/",
                ),
            };
            vec![
                (project_file, project.replace("__NAME__", name)),
                (app_file, app.replace("__NAME__", name)),
                (
                    "switchyard.toml",
                    manifest(name, NOTES_ROUTES, &notes_queue(name)),
                ),
                (".gitignore", format!("build/\n{ignored}\n.switchyard/\n")),
            ]
        }
    };
    for (file, contents) in files {
        let path = root.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let try_it = match lang {
        Lang::Rust => format!("curl http://127.0.0.1:8080/{name}/world"),
        Lang::Python | Lang::Js => format!(
            "curl http://127.0.0.1:8080/{name}/hello/world\n          curl -d 'a note' \
             http://127.0.0.1:8080/{name}/notes && curl http://127.0.0.1:8080/{name}/notes"
        ),
    };
    println!(
        "created {root}\n\nnext:\n  build:  switchyard build {root}\n  run:    switchyard run \
         {root}/switchyard.toml\n  or both, rebuilding on every save:  switchyard dev {root}\n  \
         try:    {try_it}",
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
serde = {{ version = "1", features = ["derive"] }}

# A crate of its own, not part of any enclosing workspace.
[workspace]

# Every guest `switchyard build` builds shares one target directory (in Switchyard's home);
# the same profile lets them share compiled dependencies too.
[profile.release]
panic = "abort"
opt-level = "s"
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

const PYTHON_APP: &str = include_str!("python/app.py");
const JS_APP: &str = include_str!("js/app.js");

const PYPROJECT: &str = r#"[project]
name = "__NAME__"
version = "0.1.0"
description = "A Switchyard service in Python (`switchyard build` makes build/__NAME__.wasm)"
requires-python = ">=3.10"

# [tool.switchyard]
# module = "app"    # the module holding Handler and Subscriber
"#;

const PACKAGE_JSON: &str = r#"{
  "name": "__NAME__",
  "version": "0.1.0",
  "description": "A Switchyard service in JavaScript (`switchyard build` makes build/__NAME__.wasm)",
  "type": "module",
  "main": "app.js",
  "private": true
}
"#;

const RUST_ROUTES: &str = r#"["GET /__NAME__/{name}"]"#;
const NOTES_ROUTES: &str = r#"[
    "GET /__NAME__/hello/{who}",
    "GET /__NAME__/ask/{service}/{who}",
    "POST /__NAME__/notes",
    "GET /__NAME__/notes",
]"#;

fn notes_queue(name: &str) -> String {
    format!(
        r#"
# POST /{name}/notes sends here; the service's Subscriber consumes it.
[[queue]]
name = "{name}-notes"
subscriber = "{name}"
"#
    )
}

fn manifest(name: &str, routes: &str, extra: &str) -> String {
    let routes = routes.replace("__NAME__", name);
    format!(
        r#"[node]
name = "dev"
http = "127.0.0.1:8080"
admin = "127.0.0.1:9090"

[[service]]
name = "{name}"
version = "0.1.0"
component = "build/{name}.wasm"
routes = {routes}
config = {{ greeting = "Hello" }}
{extra}"#
    )
}
