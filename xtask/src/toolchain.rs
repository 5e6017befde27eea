//! Choosing how to build `wasm32-wasip2` guests on this machine.
//!
//! 1. **rustup**: the target is installed for the active toolchain (a user's normal machine),
//!    or `rustup target add` succeeds within a short timeout.
//! 2. **debian**: where rustup cannot download the target (no network to its servers), Debian's
//!    `rustc-web` (a newer rustc whose standard-library source ships as `rust-web-src`), `lld`
//!    for `wasm-ld`, and `wasi-libc` build the standard library from source with
//!    `-Zbuild-std`. `wasm-component-ld` comes from rustup's stable sysroot. When running as
//!    root the packages are installed here; otherwise the exact command is printed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub(crate) const TARGET: &str = "wasm32-wasip2";

const DEBIAN_PACKAGES: &[&str] = &["rustc-web", "rust-web-src", "lld-22", "wasi-libc"];
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_STD_SOURCE: &str = "/usr/lib/rustlib/src/rust/library";
const WASI_LIBC: &str = "/usr/lib/wasm32-wasi";
const RUSTUP_ADD_TIMEOUT: Duration = Duration::from_secs(20);

pub(crate) enum Route {
    Rustup,
    Debian {
        /// Directory holding `wasm-ld`.
        wasm_ld_dir: PathBuf,
        /// Directory holding `wasm-component-ld`.
        component_ld_dir: PathBuf,
    },
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Rustup => write!(f, "rustup (target {TARGET} of the active toolchain)"),
            Route::Debian {
                wasm_ld_dir,
                component_ld_dir,
            } => write!(
                f,
                "debian ({DEBIAN_RUSTC} with -Zbuild-std from {DEBIAN_STD_SOURCE}, wasm-ld in {}, \
                 wasm-component-ld in {}, libc in {WASI_LIBC})",
                wasm_ld_dir.display(),
                component_ld_dir.display()
            ),
        }
    }
}

impl Route {
    /// Adds what this route needs to a `cargo build --target wasm32-wasip2` command.
    pub(crate) fn configure(&self, build: &mut Command) -> Result<()> {
        let Route::Debian {
            wasm_ld_dir,
            component_ld_dir,
        } = self
        else {
            return Ok(());
        };
        let mut path = vec![component_ld_dir.clone(), wasm_ld_dir.clone()];
        path.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        build
            .env("PATH", std::env::join_paths(path)?)
            .env("RUSTC", DEBIAN_RUSTC)
            // build-std is unstable; the Debian compiler and its source are the same version.
            .env("RUSTC_BOOTSTRAP", "1")
            .env(
                "CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS",
                format!("-L native={WASI_LIBC}"),
            )
            .args(["-Zbuild-std=std,panic_abort"]);
        Ok(())
    }
}

pub(crate) fn choose() -> Result<Route> {
    if rustup_has_target() {
        return Ok(Route::Rustup);
    }
    if let Some(route) = debian_route() {
        eprintln!(
            "xtask: rustup's {TARGET} target is not installed; using the Debian route that is \
             (to use rustup instead: `rustup target add {TARGET}`)"
        );
        return Ok(route);
    }
    if try_rustup_add() {
        return Ok(Route::Rustup);
    }
    install_debian_route()?;
    debian_route().context(
        "the Debian packages were installed but the route is still incomplete: \
         check that `wasm-component-ld` is in rustup's stable sysroot",
    )
}

fn rustup_has_target() -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .stderr(Stdio::null())
        .output()
    else {
        return false;
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|line| line.trim() == TARGET)
}

fn try_rustup_add() -> bool {
    eprintln!(
        "xtask: trying `rustup target add {TARGET}` (gives up after {}s)",
        RUSTUP_ADD_TIMEOUT.as_secs()
    );
    let Ok(mut child) = Command::new("rustup")
        .args(["target", "add", TARGET])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success() && rustup_has_target(),
            Ok(None) if started.elapsed() < RUSTUP_ADD_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(200));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                eprintln!("xtask: rustup could not add {TARGET} (no answer from its servers)");
                return false;
            }
        }
    }
}

fn debian_route() -> Option<Route> {
    let complete = Path::new(DEBIAN_RUSTC).is_file()
        && Path::new(DEBIAN_STD_SOURCE).is_dir()
        && Path::new(WASI_LIBC).join("libc.a").is_file();
    if !complete {
        return None;
    }
    Some(Route::Debian {
        wasm_ld_dir: newest_wasm_ld_dir()?,
        component_ld_dir: component_ld_dir()?,
    })
}

/// `/usr/lib/llvm-N/bin` with the highest N that has `wasm-ld`.
fn newest_wasm_ld_dir() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib")
        .ok()?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            let version: u32 = name.strip_prefix("llvm-")?.parse().ok()?;
            let bin = Path::new("/usr/lib").join(&name).join("bin");
            bin.join("wasm-ld").is_file().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
}

/// rustup's stable toolchain ships `wasm-component-ld` next to its host tools.
fn component_ld_dir() -> Option<PathBuf> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    let sysroot = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    let host = host_triple()?;
    let dir = sysroot.join("lib/rustlib").join(host).join("bin");
    dir.join("wasm-component-ld").is_file().then_some(dir)
}

fn host_triple() -> Option<String> {
    let out = Command::new("rustc").arg("-vV").output().ok()?;
    String::from_utf8(out.stdout)
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("host: ").map(str::to_owned))
}

fn install_debian_route() -> Result<()> {
    apt_install(
        DEBIAN_PACKAGES,
        &format!(
            "cannot build {TARGET} guests: rustup's target is not installed and could not be \
             added, and the Debian route is missing. Either run `rustup target add {TARGET}`, \
             or install the Debian route as root"
        ),
    )
}

/// Installs Debian `packages` when running as root; otherwise fails with `why` and the exact
/// command to run.
pub(crate) fn apt_install(packages: &[&str], why: &str) -> Result<()> {
    let command = format!(
        "apt-get update && apt-get install -y {}",
        packages.join(" ")
    );
    if !running_as_root() {
        bail!("{why}: `sudo sh -c '{command}'`");
    }
    eprintln!("xtask: installing Debian packages: {command}");
    let status = Command::new("sh")
        .args(["-c", &command])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .context("could not run apt-get")?;
    if !status.success() {
        bail!("`{command}` failed with {status}");
    }
    Ok(())
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}
