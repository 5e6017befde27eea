//! The `switchyard` command: run or check a manifest, scaffold a guest.

mod scaffold;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use switchyard::telemetry::{self, LogFormat};
use switchyard::{Manifest, Node};

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Run microservices written as WebAssembly components"
)]
struct Cli {
    /// How log lines are written to stderr (filter with SWITCHYARD_LOG, e.g. `info,guest=debug`).
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node from a manifest until Ctrl-C or SIGTERM.
    Run {
        /// Path of the manifest (TOML).
        manifest: PathBuf,
    },
    /// Check a manifest and its components (compiles them into the cache), without serving.
    Check {
        /// Path of the manifest (TOML).
        manifest: PathBuf,
    },
    /// Create a new guest crate that builds and serves out of the box.
    New {
        /// Name of the service and crate (lower-case letters, digits, hyphens).
        name: String,
        /// Directory to create it in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Path of the switchyard-sdk crate (defaults to the one this binary was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Run { manifest } => run(manifest),
        Command::Check { manifest } => check(manifest),
        Command::New { name, dir, sdk } => scaffold::new_guest(&name, &dir, sdk.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(manifest: PathBuf) -> Result<()> {
    let manifest = Manifest::load(&manifest)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let node = Node::start(&manifest).await?;
        wait_for_stop_signal().await?;
        node.shutdown().await;
        Ok(())
    })
}

async fn wait_for_stop_signal() -> Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot listen for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

fn check(path: PathBuf) -> Result<()> {
    let manifest = Manifest::load(&path)?;
    let components = switchyard::node::check(&manifest)?;
    let routes: usize = manifest.services.iter().map(|s| s.routes.len()).sum();
    println!(
        "ok: {} is valid: node `{}`, {} service(s), {routes} route(s)",
        path.display(),
        manifest.node.name,
        manifest.services.len()
    );
    for (spec, component) in manifest.services.iter().zip(components) {
        println!(
            "  {} {} sha256:{} ({})",
            spec.name,
            spec.version,
            &component.hash[..16],
            if component.from_cache {
                "compiled, from cache"
            } else {
                "compiled now"
            }
        );
    }
    Ok(())
}
