//! Switchyard's home (`$SWITCHYARD_HOME`, else `~/.switchyard`): what guest builds share.
//!
//! - `sdk/<version>-<hash>/`: the SDK crate and WIT this binary was built with, written out
//!   from the binary itself, so a scaffold depends on them wherever the binary runs (no path
//!   into a source checkout). The hash of the contents names the directory: a binary with a
//!   changed SDK never reuses another's files.
//! - `target/`: one cargo target directory for every Rust guest, so a new crate's first build
//!   reuses the dependencies (wit-bindgen, serde, ...) that earlier guests compiled.
//! - `tools/`: the pinned componentize-py (PyPI) and ComponentizeJS (npm) that Python and
//!   JavaScript guests are built with, installed on first use.
//!
//! Each is written to a temporary directory beside its place and renamed into it, so a build
//! that is interrupted, or two that run at once, never leave a half-written one behind.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use include_dir::{Dir, include_dir};
use sha2::{Digest, Sha256};

static SDK_SOURCES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../sdk/src");
static WIT: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../wit");
const SDK_MANIFEST: &str = include_str!("../../../../sdk/Cargo.toml");

/// The componentize-py release Python guests are built with.
pub(crate) const COMPONENTIZE_PY: &str = "componentize-py==0.25.0";
/// The ComponentizeJS release JavaScript guests are built with.
pub(crate) const COMPONENTIZE_JS: &str = "@bytecodealliance/componentize-js@0.23.0";

#[derive(Clone)]
pub(crate) struct Home {
    root: PathBuf,
}

/// Where the installed SDK is.
pub(crate) struct InstalledSdk {
    /// The `switchyard-sdk` crate (a path dependency of Rust guests).
    pub(crate) crate_dir: PathBuf,
    /// The `switchyard:runtime` WIT package (what Python and JS guests are built against).
    pub(crate) wit: PathBuf,
}

impl Home {
    pub(crate) fn locate() -> Result<Home> {
        let root = match std::env::var_os("SWITCHYARD_HOME") {
            Some(root) if !root.is_empty() => PathBuf::from(root),
            _ => std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".switchyard"))
                .context("neither SWITCHYARD_HOME nor HOME is set: set SWITCHYARD_HOME to a directory Switchyard may keep its SDK and build cache in")?,
        };
        // Absolute and without `..`: its paths are written into scaffolds' Cargo.toml.
        std::fs::create_dir_all(&root).with_context(|| {
            format!(
                "cannot create Switchyard's home {}: set SWITCHYARD_HOME to a writable directory",
                root.display()
            )
        })?;
        let root = root
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", root.display()))?;
        Ok(Home { root })
    }

    /// The cargo target directory all Rust guests share.
    pub(crate) fn rust_target(&self) -> PathBuf {
        self.root.join("target")
    }

    /// The SDK and WIT this binary carries, written out on first use.
    pub(crate) fn sdk(&self) -> Result<InstalledSdk> {
        let dir = self.root.join("sdk").join(format!(
            "{}-{}",
            env!("CARGO_PKG_VERSION"),
            contents_hash()
        ));
        let installed = InstalledSdk {
            crate_dir: dir.join("switchyard-sdk"),
            wit: dir.join("wit"),
        };
        if dir.is_dir() {
            return Ok(installed);
        }
        install_atomically(&dir, |staging| {
            let crate_dir = staging.join("switchyard-sdk");
            write_dir(&SDK_SOURCES, &crate_dir.join("src"))?;
            write_file(
                &crate_dir.join("Cargo.toml"),
                standalone_manifest()?.as_bytes(),
            )?;
            write_dir(&WIT, &staging.join("wit"))
        })?;
        Ok(installed)
    }

    /// The directory holding componentize-py's Python package (for `PYTHONPATH`).
    pub(crate) fn componentize_py(&self) -> Result<PathBuf> {
        let dir = self
            .root
            .join("tools")
            .join(COMPONENTIZE_PY.replace("==", "-"));
        if !dir.is_dir() {
            eprintln!("installing {COMPONENTIZE_PY} (PyPI) into {}", dir.display());
            install_atomically(&dir, |staging| {
                let mut pip = Command::new(python());
                pip.args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .arg("--target")
                .arg(staging)
                .arg(COMPONENTIZE_PY);
                run_tool(
                    &mut pip,
                    "install it with pip (Python 3.10 or later and pip are needed)",
                )
            })?;
        }
        Ok(dir)
    }

    /// The `componentize-js` command of the pinned ComponentizeJS.
    pub(crate) fn componentize_js(&self) -> Result<PathBuf> {
        let dir = self
            .root
            .join("tools")
            .join(COMPONENTIZE_JS.trim_start_matches("@bytecodealliance/"));
        let bin = dir.join("node_modules/.bin/componentize-js");
        if !bin.is_file() {
            eprintln!("installing {COMPONENTIZE_JS} (npm) into {}", dir.display());
            install_atomically(&dir, |staging| {
                let mut npm = Command::new("npm");
                npm.args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
                    .arg(staging)
                    .arg(COMPONENTIZE_JS);
                run_tool(
                    &mut npm,
                    "install it with npm (Node.js 20 or later is needed)",
                )
            })?;
        }
        Ok(bin)
    }
}

/// The Python that runs componentize-py: `$PYTHON`, else `python3`.
pub(crate) fn python() -> std::ffi::OsString {
    std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into())
}

fn run_tool(command: &mut Command, how: &str) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot start {command:?}: {how}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status}): {how}");
    }
    Ok(())
}

/// Fills a fresh directory beside `dir` with `fill`, then renames it to `dir`. Losing a race
/// to another process that did the same is fine: its copy is as good as ours.
fn install_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dir
        .parent()
        .with_context(|| format!("{} has no parent directory", dir.display()))?;
    std::fs::create_dir_all(parent).with_context(|| {
        format!(
            "cannot create {}: set SWITCHYARD_HOME to a writable directory",
            parent.display()
        )
    })?;
    let staging = tempfile::Builder::new()
        .prefix(".installing-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a directory in {}", parent.display()))?;
    fill(staging.path())?;
    let staged = staging.keep();
    if let Err(err) = std::fs::rename(&staged, dir) {
        let _ = std::fs::remove_dir_all(&staged);
        if !dir.is_dir() {
            return Err(err)
                .with_context(|| format!("cannot move the install into {}", dir.display()));
        }
    }
    Ok(())
}

fn write_dir(embedded: &Dir<'_>, to: &Path) -> Result<()> {
    for file in embedded.files() {
        write_file(&to.join(file.path()), file.contents())?;
    }
    for dir in embedded.dirs() {
        write_dir(dir, to)?;
    }
    Ok(())
}

fn write_file(path: &Path, contents: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}

/// The SDK's manifest without the workspace it lives in here: the values it inherits are
/// this binary's own.
fn standalone_manifest() -> Result<String> {
    let mut out = String::with_capacity(SDK_MANIFEST.len());
    let mut lines = SDK_MANIFEST.lines().peekable();
    while let Some(line) = lines.next() {
        let inherited = match line.trim() {
            "version.workspace = true" => format!("version = {:?}", env!("CARGO_PKG_VERSION")),
            "edition.workspace = true" => "edition = \"2024\"".to_owned(),
            "rust-version.workspace = true" => {
                format!("rust-version = {:?}", env!("CARGO_PKG_RUST_VERSION"))
            }
            "license.workspace = true" => format!("license = {:?}", env!("CARGO_PKG_LICENSE")),
            // The workspace's lints are for this repository's own checks, not a user's build.
            "[lints]" if lines.peek().map(|next| next.trim()) == Some("workspace = true") => {
                lines.next();
                continue;
            }
            other if other.contains("workspace = true") => {
                bail!(
                    "the SDK's Cargo.toml inherits `{other}` from the workspace, which a standalone copy cannot; give it a value in sdk/Cargo.toml"
                )
            }
            _ => line.to_owned(),
        };
        out.push_str(&inherited);
        out.push('\n');
    }
    // A crate of its own, never a member of whatever workspace encloses the home.
    out.push_str("\n[workspace]\n");
    Ok(out)
}

fn contents_hash() -> String {
    let mut hasher = Sha256::new();
    hasher.update(SDK_MANIFEST);
    for dir in [&SDK_SOURCES, &WIT] {
        hash_dir(dir, &mut hasher);
    }
    hex::encode(&hasher.finalize()[..6])
}

fn hash_dir(dir: &Dir<'_>, hasher: &mut Sha256) {
    for file in dir.files() {
        hasher.update(file.path().to_string_lossy().as_bytes());
        hasher.update(file.contents());
    }
    for dir in dir.dirs() {
        hash_dir(dir, hasher);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;

    #[test]
    fn the_installed_sdk_inherits_nothing_and_carries_every_file() {
        let manifest = standalone_manifest().unwrap();
        assert!(!manifest.contains("workspace = true"), "{manifest}");
        assert!(manifest.contains(&format!("version = {:?}", env!("CARGO_PKG_VERSION"))));
        let parsed: toml::Table = toml::from_str(&manifest).unwrap();
        assert!(parsed["dependencies"].get("wit-bindgen").is_some());

        let home = tempfile::tempdir().unwrap();
        let sdk = Home {
            root: home.path().to_path_buf(),
        }
        .sdk()
        .unwrap();
        let on_disk = |dir: &Path| {
            let mut names: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .map(|entry| entry.unwrap().file_name())
                .collect();
            names.sort();
            names
        };
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        assert_eq!(on_disk(&sdk.wit), on_disk(&repo.join("wit")));
        assert_eq!(
            on_disk(&sdk.crate_dir.join("src")),
            on_disk(&repo.join("sdk/src"))
        );
        // Installing again finds the first install.
        let again = Home {
            root: home.path().to_path_buf(),
        }
        .sdk()
        .unwrap();
        assert_eq!(again.crate_dir, sdk.crate_dir);
    }
}
