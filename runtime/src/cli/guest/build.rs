//! `switchyard build [dir]`: turns a guest project into a component at `build/<name>.wasm`,
//! whatever its language, so a manifest names the same path for each.
//!
//! The language is told by the project's own manifest: `Cargo.toml` (Rust, built by cargo
//! into the home's shared target directory), `pyproject.toml` (Python, componentize-py) or
//! `package.json` (JavaScript, ComponentizeJS). Python and JS projects may name another WIT
//! world (say `wasi:http/proxy`) under `[tool.switchyard]` or `"switchyard"`: `wit` (a path
//! relative to the project) and `world`; by default they are built against the
//! `switchyard:runtime/service` world this binary carries.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::home::{Home, python};

/// The languages a guest project can be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Lang {
    Rust,
    Python,
    Js,
}

/// A guest project: where it is, what it is called, how it is built.
#[derive(Clone, Debug)]
pub(crate) struct Project {
    pub(crate) dir: PathBuf,
    pub(crate) name: String,
    pub(crate) lang: Lang,
    /// Python: the module; JS: the source file.
    entry: String,
    /// Another WIT package and world than the SDK's (Python and JS).
    wit: Option<(PathBuf, String)>,
}

impl Project {
    /// Reads the project in `dir`.
    pub(crate) fn open(dir: &Path) -> Result<Project> {
        let dir = dir
            .canonicalize()
            .with_context(|| format!("no guest project at {}", dir.display()))?;
        if dir.join("Cargo.toml").is_file() {
            let manifest: toml::Table = read_toml(&dir.join("Cargo.toml"))?;
            let name = manifest
                .get("package")
                .and_then(|package| package.get("name"))
                .and_then(|name| name.as_str())
                .with_context(|| {
                    format!("{} has no [package] name", dir.join("Cargo.toml").display())
                })?
                .to_owned();
            return Ok(Project {
                dir,
                name,
                lang: Lang::Rust,
                entry: String::new(),
                wit: None,
            });
        }
        if dir.join("pyproject.toml").is_file() {
            let path = dir.join("pyproject.toml");
            let manifest: toml::Table = read_toml(&path)?;
            let name = manifest
                .get("project")
                .and_then(|project| project.get("name"))
                .and_then(|name| name.as_str())
                .with_context(|| format!("{} has no [project] name", path.display()))?
                .to_owned();
            let ours = manifest
                .get("tool")
                .and_then(|tool| tool.get("switchyard"))
                .cloned()
                .unwrap_or_else(|| toml::Value::Table(toml::Table::new()));
            let text = |key: &str| ours.get(key).and_then(|value| value.as_str());
            let entry = text("module").unwrap_or("app").to_owned();
            let wit = other_world(&dir, text("wit"), text("world"), &path, "[tool.switchyard]")?;
            return Ok(Project {
                dir,
                name,
                lang: Lang::Python,
                entry,
                wit,
            });
        }
        if dir.join("package.json").is_file() {
            let path = dir.join("package.json");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let manifest: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", path.display()))?;
            let name = manifest["name"]
                .as_str()
                .with_context(|| format!("{} has no \"name\"", path.display()))?
                .to_owned();
            let entry = manifest["main"].as_str().unwrap_or("app.js").to_owned();
            let ours = &manifest["switchyard"];
            let wit = other_world(
                &dir,
                ours["wit"].as_str(),
                ours["world"].as_str(),
                &path,
                "\"switchyard\"",
            )?;
            return Ok(Project {
                dir,
                name,
                lang: Lang::Js,
                entry,
                wit,
            });
        }
        bail!(
            "{} is not a guest project: it has no Cargo.toml (Rust), pyproject.toml (Python) or \
             package.json (JavaScript); `switchyard new <name> --lang rust|python|js` makes one",
            dir.display()
        )
    }

    /// Where `build` puts the component.
    pub(crate) fn component(&self) -> PathBuf {
        self.dir.join("build").join(format!("{}.wasm", self.name))
    }

    /// Files whose change calls for a rebuild (what `switchyard dev` watches): everything
    /// but what builds write.
    pub(crate) fn is_source(&self, path: &Path) -> bool {
        let Ok(relative) = path.strip_prefix(&self.dir) else {
            return false;
        };
        let skipped = [
            "build",
            "target",
            "node_modules",
            "__pycache__",
            ".switchyard",
            ".git",
        ];
        !relative.components().any(|part| {
            let part = part.as_os_str().to_string_lossy();
            skipped.contains(&part.as_ref()) || part.starts_with('.') && part.ends_with(".swp")
        })
    }

    /// Builds the component; on failure the error holds the compiler's own words.
    pub(crate) fn build(&self, home: &Home) -> Result<PathBuf> {
        let started = Instant::now();
        let out = self.component();
        let build_dir = self.dir.join("build");
        std::fs::create_dir_all(&build_dir)
            .with_context(|| format!("cannot create {}", build_dir.display()))?;
        // Built beside its place and renamed in: a node watching the path never reads half a
        // component.
        let staged = build_dir.join(format!(".{}.wasm.partial", self.name));
        match self.lang {
            Lang::Rust => {
                let target = home.rust_target();
                let mut cargo = Command::new(cargo());
                cargo
                    .args([
                        "build",
                        "--release",
                        "--target",
                        WASM_TARGET,
                        "--manifest-path",
                    ])
                    .arg(self.dir.join("Cargo.toml"))
                    .arg("--target-dir")
                    .arg(&target);
                run_build(&mut cargo, "cargo", rust_hint)?;
                let built = target
                    .join(WASM_TARGET)
                    .join("release")
                    .join(format!("{}.wasm", self.name.replace('-', "_")));
                std::fs::copy(&built, &staged).with_context(|| {
                    format!(
                        "cargo built no {}: is {} a `cdylib` crate?",
                        built.display(),
                        self.name
                    )
                })?;
            }
            Lang::Python => {
                let (wit, world) = self.world(home)?;
                let tools = home.componentize_py()?;
                let mut componentize = Command::new(python());
                componentize
                    .args([
                        "-c",
                        "import sys; from componentize_py import script; \
                         sys.argv[0] = 'componentize-py'; sys.exit(script())",
                        "-d",
                    ])
                    .arg(&wit)
                    .args(["-w", &world, "componentize", "-p"])
                    .arg(&self.dir)
                    .arg(&self.entry)
                    .arg("-o")
                    .arg(&staged)
                    .current_dir(&self.dir)
                    .env("PYTHONPATH", &tools);
                run_build(&mut componentize, "componentize-py", |_| None)?;
            }
            Lang::Js => {
                let (wit, world) = self.world(home)?;
                let componentize_js = home.componentize_js()?;
                let mut componentize = Command::new(componentize_js);
                componentize
                    .arg(self.dir.join(&self.entry))
                    .arg("--wit")
                    .arg(&wit)
                    .args(["--world-name", &world, "--out"])
                    .arg(&staged)
                    .current_dir(&self.dir);
                run_build(&mut componentize, "componentize-js", |_| None)?;
            }
        }
        std::fs::rename(&staged, &out)
            .with_context(|| format!("cannot move the component to {}", out.display()))?;
        let size = std::fs::metadata(&out).map(|meta| meta.len()).unwrap_or(0);
        eprintln!(
            "built {} ({:.1} MB) in {:.1} s",
            out.display(),
            size as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
        Ok(out)
    }
}

impl Project {
    /// The WIT package and world a Python or JS project is built against: its own, or the
    /// SDK's `service` world this binary carries.
    fn world(&self, home: &Home) -> Result<(PathBuf, String)> {
        match &self.wit {
            Some(other) => Ok(other.clone()),
            None => Ok((home.sdk()?.wit, "service".to_owned())),
        }
    }
}

pub(crate) const WASM_TARGET: &str = "wasm32-wasip2";

/// `build/<name>.wasm` from the project in `dir`.
pub(crate) fn build(dir: &Path) -> Result<()> {
    let project = Project::open(dir)?;
    project.build(&Home::locate()?)?;
    Ok(())
}

/// A WIT package and world a project names instead of the SDK's; both or neither.
fn other_world(
    dir: &Path,
    wit: Option<&str>,
    world: Option<&str>,
    file: &Path,
    section: &str,
) -> Result<Option<(PathBuf, String)>> {
    match (wit, world) {
        (None, None) => Ok(None),
        (Some(wit), Some(world)) => {
            let wit = dir.join(wit);
            if !wit.exists() {
                bail!(
                    "{}: {section} wit = {:?} does not exist (a path relative to the project)",
                    file.display(),
                    wit.display()
                );
            }
            Ok(Some((wit, world.to_owned())))
        }
        _ => bail!(
            "{}: {section} names only one of `wit` and `world`; give both (e.g. wit = \"wit\", \
             world = \"wasi:http/proxy@0.2.12\") or neither (the Switchyard service world)",
            file.display()
        ),
    }
}

fn read_toml(path: &Path) -> Result<toml::Table> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))
}

/// The cargo that runs us when we run under cargo (so rustup's choice carries over).
fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Runs a build step, passing its output through; a failure carries the last lines it wrote.
fn run_build(
    command: &mut Command,
    tool: &str,
    hint: impl Fn(&str) -> Option<&'static str>,
) -> Result<()> {
    let output = command
        .stdout(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::piped())
        .output()
        .with_context(|| format!("cannot start {tool}: is it installed and on PATH?"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        // Quiet success: cargo's "Compiling" lines say what was built.
        eprint!("{stderr}");
        return Ok(());
    }
    let hint = hint(&stderr)
        .map(|hint| format!("\n{hint}"))
        .unwrap_or_default();
    bail!(
        "{tool} failed ({}):\n{}{hint}",
        output.status,
        stderr.trim_end()
    )
}

fn rust_hint(stderr: &str) -> Option<&'static str> {
    (stderr.contains("target may not be installed")
        || stderr.contains("can't find crate for `core`"))
    .then_some("the wasm32-wasip2 target is missing: `rustup target add wasm32-wasip2`")
}
