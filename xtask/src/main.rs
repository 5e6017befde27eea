//! `cargo xtask <command>`: everything a fresh machine needs, in one place.
//!
//! - `build-guests [--path DIR]`: builds the guests workspace (or one guest crate) to
//!   `wasm32-wasip2` components, choosing a toolchain route by itself (see [`toolchain`]).
//! - `test`: installs what the tests need, builds the guests, runs every test.
//! - `demo`: builds what the demo needs and runs the hello node in the foreground.
//! - `bench`: builds the guests and runs the benchmarks with their baselines.

mod toolchain;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Switchyard project automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build guests to wasm32-wasip2 components (default: every crate under guests/).
    BuildGuests {
        /// Build this guest crate (a directory with its own Cargo.toml) instead.
        #[arg(long)]
        path: Option<PathBuf>,
    },
    /// Install what the tests need, build the guests, and run every test.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Build the hello guest and run the example node in the foreground.
    Demo,
    /// Build the guests and run the benchmarks (each against its baseline, same run).
    Bench {
        /// Extra arguments for `cargo bench`.
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
}

fn main() -> std::process::ExitCode {
    match run_command(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_command(cli: Cli) -> Result<()> {
    let root = workspace_root()?;
    match cli.command {
        Cmd::BuildGuests { path } => {
            match path {
                // A crate of its own keeps its own target dir, where its manifest expects it.
                Some(dir) => build_guests(&dir.join("Cargo.toml"), &dir.join("target")),
                None => build_guests(&root.join("guests/Cargo.toml"), &root.join("target/guests")),
            }
        }
        Cmd::Test { cargo_args } => {
            // Formatting first: it fails in a second, before anything is built.
            let mut fmt = cargo(&root);
            fmt.args(["fmt", "--all", "--", "--check"]);
            run(&mut fmt).context("`cargo fmt --all` would change files; run it and commit")?;
            test_servers()?;
            build_guests(&root.join("guests/Cargo.toml"), &root.join("target/guests"))?;
            // The CLI and scaffold tests run the `switchyard` and `xtask` binaries as a user
            // would. Building every target of the workspace at once resolves the same features
            // as `cargo test --workspace`, so wasmtime is compiled once, not twice.
            let mut binaries = cargo(&root);
            binaries.args(["build", "--release", "--workspace", "--all-targets"]);
            run(&mut binaries)?;
            // Lints and docs before the tests (whose summary is the last thing printed), in
            // the release profile, so both reuse one check of the dependencies.
            let mut clippy = cargo(&root);
            clippy.args([
                "clippy",
                "--release",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]);
            run(&mut clippy)?;
            let mut doc = cargo(&root);
            doc.args(["doc", "--release", "--workspace", "--no-deps"])
                .env("RUSTDOCFLAGS", "-D warnings");
            run(&mut doc)?;
            let mut test = cargo(&root);
            test.args(["test", "--release", "--workspace"])
                .args(&cargo_args);
            run(&mut test)
        }
        Cmd::Demo => {
            build_guests(&root.join("guests/Cargo.toml"), &root.join("target/guests"))?;
            eprintln!(
                "xtask: starting the hello node; try `curl http://127.0.0.1:8080/hello/ada` \
                 (Ctrl-C stops it)"
            );
            let mut demo = cargo(&root);
            demo.args([
                "run",
                "--release",
                "--quiet",
                "--package",
                "switchyard",
                "--",
            ])
            .args(["run", "examples/hello/switchyard.toml"]);
            run(&mut demo)
        }
        Cmd::Bench { cargo_args } => {
            bench_servers()?;
            wasmtime_cli(&root)?;
            build_guests(&root.join("guests/Cargo.toml"), &root.join("target/guests"))?;
            let mut bench = cargo(&root);
            // The whole workspace's feature set, as `cargo xtask test` builds it: asking for
            // the benches package alone resolved other features and rebuilt wasmtime.
            bench.args(["bench", "--workspace"]).args(&cargo_args);
            run(&mut bench)
        }
    }
}

/// Servers and programs the tests start themselves, on free ports: etcd (the etcd discovery
/// backend), nats-server (the NATS JetStream messaging backend), Prometheus (which scrapes a
/// node) and Chromium (which loads the live page).
fn test_servers() -> Result<()> {
    installed(
        &["/usr/bin/prometheus"],
        "prometheus",
        "the metrics test starts Prometheus to scrape a node; install it as root",
    )?;
    installed(
        &["/usr/bin/chromium"],
        "chromium",
        "the live page's test loads it in headless Chromium; install it as root",
    )?;
    // The packages may start system services on their usual ports; the tests start their own.
    installed(
        &["/usr/bin/etcd", "/usr/local/bin/etcd"],
        "etcd-server",
        "the etcd discovery tests need an etcd server; install it as root",
    )?;
    nats_server()
}

/// Servers the benchmarks start themselves, on free ports, as their baselines: nats-server
/// (the messaging benchmark).
fn bench_servers() -> Result<()> {
    nats_server()
}

/// `wasmtime serve`, the wasi_http benchmark's baseline: wasmtime-cli 48.0.8 from crates.io
/// under `target/tools` (a 10-15 minute build on 2 cores, once per checkout), unless
/// `WASMTIME` names a wasmtime 48 binary.
fn wasmtime_cli(root: &Path) -> Result<()> {
    let tools = root.join("target/tools/wasmtime-48");
    if std::env::var_os("WASMTIME").is_some() || tools.join("bin/wasmtime").is_file() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing wasmtime-cli 48.0.8 into {} (once)",
        tools.display()
    );
    let mut install = cargo(root);
    install
        .args([
            "install",
            "wasmtime-cli",
            "--version",
            "48.0.8",
            "--locked",
            "--root",
        ])
        .arg(&tools);
    run(&mut install)
}

fn nats_server() -> Result<()> {
    installed(
        &["/usr/sbin/nats-server", "/usr/bin/nats-server"],
        "nats-server",
        "the NATS backend's tests and the messaging benchmark start nats-server; install it \
         as root",
    )
}

/// Installs Debian `package` unless one of `binaries` is there.
fn installed(binaries: &[&str], package: &str, why: &str) -> Result<()> {
    if binaries.iter().any(|binary| Path::new(binary).is_file()) {
        return Ok(());
    }
    toolchain::apt_install(&[package], why)?;
    eprintln!("xtask: {package} installed");
    Ok(())
}

fn build_guests(manifest: &Path, target_dir: &Path) -> Result<()> {
    if !manifest.is_file() {
        bail!(
            "no guest crate at {}: pass a directory that holds a Cargo.toml",
            manifest.display()
        );
    }
    let route = toolchain::choose()?;
    eprintln!("xtask: guest toolchain route: {route}");
    let mut build = cargo(manifest.parent().unwrap_or(Path::new(".")));
    build
        .args(["build", "--release", "--target", toolchain::TARGET])
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir);
    route.configure(&mut build)?;
    run(&mut build)?;
    eprintln!(
        "xtask: components are in {}",
        target_dir.join(toolchain::TARGET).join("release").display()
    );
    Ok(())
}

/// The cargo that runs this xtask (so rustup's toolchain choice carries over).
fn cargo(root: &Path) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(root);
    command
}

fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("could not start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

fn workspace_root() -> Result<PathBuf> {
    let xtask_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    xtask_dir
        .parent()
        .map(Path::to_path_buf)
        .context("xtask is expected to live one level below the workspace root")
}
