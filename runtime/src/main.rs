//! The `switchyard` command: run or check a manifest, scaffold a guest.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use switchyard::telemetry::{self, LogFormat};
use switchyard::{Manifest, Node};

/// Calls cross threads at every hop (HTTP task, QUIC drivers, guest fibers), and glibc's
/// allocator serialises such frees on its arena locks; mimalloc frees to the owning thread's
/// heap without a lock. The benchmarks run with it too, baselines included.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Show a running node's services and peers (from its admin API).
    Status {
        /// The node's manifest (its admin address, token and CA are used).
        manifest: Option<PathBuf>,
        #[command(flatten)]
        admin: cli::AdminArgs,
    },
    /// Watch a running node live: requests/s, p50/p99 and error rate per service, calls
    /// between services, breaker states, queue and topic lag, recent swaps (its admin `/live`,
    /// the same as the live page at the admin address's `/`).
    Top {
        /// The node's manifest (its admin address, token and CA are used).
        manifest: Option<PathBuf>,
        #[command(flatten)]
        admin: cli::AdminArgs,
        /// Redraw every this many milliseconds.
        #[arg(long, default_value_t = 2000)]
        interval_ms: u64,
        /// Print one frame (rates over the last second) and exit.
        #[arg(long)]
        once: bool,
    },
    /// Hot-swap a running node's service or policy to a new component, without dropping a
    /// request (in-flight requests finish on the old code; a policy keeps its state).
    Swap {
        /// `service` or `policy`.
        #[arg(value_enum)]
        kind: SwapKind,
        /// The service's or policy's name in the manifest.
        name: String,
        /// The new component (.wasm).
        component: PathBuf,
        /// The node's manifest (its admin address, token and CA are used).
        #[arg(long)]
        manifest: Option<PathBuf>,
        #[command(flatten)]
        admin: cli::AdminArgs,
        /// Wait until the new version is through its probation (about 3 s): exit 0 once it
        /// serves, non-zero if the node rolled it back (with the reason).
        #[arg(long)]
        wait: bool,
    },
    /// Send a queue's dead letters again (after fixing what made them fail).
    Redrive {
        /// The queue's name in the manifest.
        queue: String,
        /// The node's manifest (its admin address, token and CA are used).
        #[arg(long)]
        manifest: Option<PathBuf>,
        #[command(flatten)]
        admin: cli::AdminArgs,
    },
    /// Rewind a topic's subscription (or move it forward): it gets the messages the topic keeps
    /// from there on again.
    Replay {
        /// The topic's name in the manifest.
        topic: String,
        /// The subscribing service whose cursor moves.
        #[arg(long)]
        subscriber: String,
        /// `beginning`, `latest`, an offset, or an RFC 3339 time.
        #[arg(long)]
        from: String,
        /// The node's manifest (its admin address, token and CA are used).
        #[arg(long)]
        manifest: Option<PathBuf>,
        #[command(flatten)]
        admin: cli::AdminArgs,
    },
    /// Back up or restore one service's state (through the admin API of the node that runs it).
    State {
        #[command(subcommand)]
        what: StateCommand,
    },
    /// Create cluster certificates for mutual TLS between nodes.
    Cert {
        #[command(subcommand)]
        what: CertCommand,
    },
    /// Create a new guest project (Rust, Python or JavaScript) that builds and serves out of
    /// the box.
    New {
        /// Name of the service and project (lower-case letters, digits, hyphens).
        name: String,
        /// The guest's language.
        #[arg(long, value_enum, default_value = "rust")]
        lang: cli::Lang,
        /// Directory to create it in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Path of a switchyard-sdk crate for a Rust guest (by default the SDK this binary
        /// carries, written out into Switchyard's home).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Build a guest project into `build/<name>.wasm` (Rust with cargo, Python with
    /// componentize-py, JavaScript with ComponentizeJS).
    Build {
        /// The project's directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Build a guest project, serve it from its manifest, and rebuild and swap it on every
    /// save; a failed build is printed while the last good version keeps serving.
    Dev {
        /// The project's directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// The manifest to run (default: the project's switchyard.toml).
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SwapKind {
    Service,
    Policy,
}

#[derive(Subcommand)]
enum StateCommand {
    /// Write every key of a service as JSON lines (to --out, or stdout).
    Export {
        /// The service whose keys are exported.
        service: String,
        /// The file to write (written whole, then renamed into place).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The node's manifest (its admin address, token and CA are used).
        #[arg(long)]
        manifest: Option<PathBuf>,
        #[command(flatten)]
        admin: cli::AdminArgs,
    },
    /// Make an export the whole state of a service (keys not in it are removed), in one
    /// commit.
    Import {
        /// The service whose keys are replaced; the export must be of this service.
        service: String,
        /// The file `switchyard state export` wrote.
        file: PathBuf,
        /// The node's manifest (its admin address, token and CA are used).
        #[arg(long)]
        manifest: Option<PathBuf>,
        #[command(flatten)]
        admin: cli::AdminArgs,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// A new cluster CA: writes ca.pem and ca.key (keep ca.key secret).
    Ca {
        /// Directory to write into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Cluster name, in the CA's common name.
        #[arg(long, default_value = "switchyard")]
        name: String,
        /// Days the CA is valid (every node must trust a new one before it replaces it).
        #[arg(long, default_value_t = switchyard::cert::CA_DAYS)]
        days: u32,
    },
    /// A node certificate signed by the CA: writes <name>.pem and <name>.key.
    Node {
        /// Node name (as in `[node] name`).
        name: String,
        /// Directory holding ca.pem and ca.key.
        #[arg(long, default_value = ".")]
        ca_dir: PathBuf,
        /// Directory to write into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Days the certificate is valid; renew it before then (see SECURITY.md).
        #[arg(long, default_value_t = switchyard::cert::NODE_DAYS)]
        days: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Run { manifest } => run(manifest),
        Command::Check { manifest } => check(manifest),
        Command::New {
            name,
            lang,
            dir,
            sdk,
        } => cli::new_guest(&name, &dir, lang, sdk.as_deref()),
        Command::Build { dir } => cli::build(&dir),
        Command::Dev { dir, manifest } => cli::dev(&dir, manifest.as_deref()),
        Command::Cert { what } => cli::cert(what),
        Command::State {
            what:
                StateCommand::Export {
                    service,
                    out,
                    manifest,
                    admin,
                },
        } => cli::export_state(&service, out.as_deref(), manifest, &admin),
        Command::State {
            what:
                StateCommand::Import {
                    service,
                    file,
                    manifest,
                    admin,
                },
        } => cli::import_state(&service, &file, manifest, &admin),
        Command::Status { manifest, admin } => cli::status(manifest, &admin),
        Command::Top {
            manifest,
            admin,
            interval_ms,
            once,
        } => cli::top(
            manifest,
            &admin,
            std::time::Duration::from_millis(interval_ms.max(100)),
            once,
        ),
        Command::Swap {
            kind,
            name,
            component,
            manifest,
            admin,
            wait,
        } => cli::swap(kind, &name, &component, manifest, &admin, wait),
        Command::Redrive {
            queue,
            manifest,
            admin,
        } => cli::redrive(&queue, manifest, &admin),
        Command::Replay {
            topic,
            subscriber,
            from,
            manifest,
            admin,
        } => cli::replay(&topic, &subscriber, &from, manifest, &admin),
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
        let mut node = Node::start(&manifest).await?;
        if let Err(error) = node.watch_manifest(None) {
            tracing::warn!(%error, "edits of the manifest will need a restart");
        }
        wait_for_stop_signal().await?;
        node.shutdown().await;
        Ok(())
    })
}

pub(crate) async fn wait_for_stop_signal() -> Result<()> {
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
            "  {} {} sha256:{} ({}, {})",
            spec.name,
            spec.version,
            &component.hash[..16],
            component.world(),
            if component.from_cache {
                "compiled, from cache"
            } else {
                "compiled now"
            }
        );
    }
    Ok(())
}
