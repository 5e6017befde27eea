//! The `switchyard` command: run or check a manifest, scaffold a guest.

mod scaffold;

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
        /// The node's manifest (its `node.admin` address is asked) ...
        manifest: Option<PathBuf>,
        /// ... or the admin address directly (default 127.0.0.1:9090).
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
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
        /// The node's manifest (its `node.admin` address is used) ...
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// ... or the admin address directly (default 127.0.0.1:9090).
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        /// Wait until the new version is through its probation (about 3 s): exit 0 once it
        /// serves, non-zero if the node rolled it back (with the reason).
        #[arg(long)]
        wait: bool,
    },
    /// Send a queue's dead letters again (after fixing what made them fail).
    Redrive {
        /// The queue's name in the manifest.
        queue: String,
        /// The node's manifest (its `node.admin` address is used) ...
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// ... or the admin address directly (default 127.0.0.1:9090).
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
    /// Create cluster certificates for mutual TLS between nodes.
    Cert {
        #[command(subcommand)]
        what: CertCommand,
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum SwapKind {
    Service,
    Policy,
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Run { manifest } => run(manifest),
        Command::Check { manifest } => check(manifest),
        Command::New { name, dir, sdk } => scaffold::new_guest(&name, &dir, sdk.as_deref()),
        Command::Cert { what } => cert(what),
        Command::Status { manifest, admin } => status(manifest, admin),
        Command::Swap {
            kind,
            name,
            component,
            manifest,
            admin,
            wait,
        } => swap(kind, &name, &component, manifest, admin, wait),
        Command::Redrive {
            queue,
            manifest,
            admin,
        } => redrive(&queue, manifest, admin),
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

fn cert(what: CertCommand) -> Result<()> {
    use switchyard::cert::{CertPem, generate_ca, issue_node_cert};
    let write = |dir: &std::path::Path, stem: &str, pem: &CertPem| -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        for path in [&cert, &key] {
            anyhow::ensure!(
                !path.exists(),
                "{} exists already; remove it or choose --out",
                path.display()
            );
        }
        std::fs::write(&cert, &pem.cert)
            .with_context(|| format!("cannot write {}", cert.display()))?;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)
            .with_context(|| format!("cannot write {}", key.display()))?;
        std::io::Write::write_all(&mut file, pem.key.as_bytes())?;
        println!("wrote {} and {}", cert.display(), key.display());
        Ok(())
    };
    match what {
        CertCommand::Ca { out, name } => write(&out, "ca", &generate_ca(&name)?),
        CertCommand::Node { name, ca_dir, out } => {
            let read = |file: &str| {
                let path = ca_dir.join(file);
                std::fs::read_to_string(&path).with_context(|| {
                    format!(
                        "cannot read {}: create the CA first with `switchyard cert ca`",
                        path.display()
                    )
                })
            };
            let ca = CertPem {
                cert: read("ca.pem")?,
                key: read("ca.key")?,
            };
            write(&out, &name, &issue_node_cert(&ca, &name)?)
        }
    }
}

fn swap(
    kind: SwapKind,
    name: &str,
    component: &std::path::Path,
    manifest: Option<PathBuf>,
    admin: Option<std::net::SocketAddr>,
    wait: bool,
) -> Result<()> {
    let admin = admin_address(manifest, admin)?;
    let bytes = std::fs::read(component)
        .with_context(|| format!("cannot read the new component {}", component.display()))?;
    let path = match kind {
        SwapKind::Service => format!("/services/{name}"),
        SwapKind::Policy => format!("/policies/{name}"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, body) = runtime.block_on(admin_post(admin, &path, bytes))?;
    if status != 200 {
        anyhow::bail!("the node refused the swap ({status}): {}", body.trim_end());
    }
    println!("{body}");
    if wait {
        let verdict = runtime.block_on(follow_probation(admin, kind, name))?;
        println!("{verdict}");
    }
    Ok(())
}

/// The admin address given, or the manifest's, or the default: the one rule of every command
/// that talks to a running node.
fn admin_address(
    manifest: Option<PathBuf>,
    admin: Option<std::net::SocketAddr>,
) -> Result<std::net::SocketAddr> {
    Ok(match (admin, manifest) {
        (Some(admin), _) => admin,
        (None, Some(path)) => Manifest::load(&path)?.node.admin,
        (None, None) => switchyard::manifest::defaults::ADMIN.parse()?,
    })
}

fn redrive(
    queue: &str,
    manifest: Option<PathBuf>,
    admin: Option<std::net::SocketAddr>,
) -> Result<()> {
    let admin = admin_address(manifest, admin)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let path = format!("/queues/{queue}/redrive");
    let (status, body) = runtime.block_on(admin_post(admin, &path, Vec::new()))?;
    if status != 200 {
        anyhow::bail!(
            "the node refused the redrive ({status}): {}",
            body.trim_end()
        );
    }
    println!("{body}");
    Ok(())
}

/// How long `swap --wait` follows a swap: the node's probation (3 s) and some slack.
const PROBATION_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Polls the admin API until the last swap of `name` serves (`Ok`, with what the node says)
/// or was rolled back (`Err` with the node's reason). A policy counts as serving once every
/// binding of it does.
async fn follow_probation(
    admin: std::net::SocketAddr,
    kind: SwapKind,
    name: &str,
) -> Result<String> {
    let started = std::time::Instant::now();
    loop {
        let swaps: Vec<serde_json::Value> = match kind {
            SwapKind::Service => admin_get(admin, "/services")
                .await?
                .as_array()
                .into_iter()
                .flatten()
                .filter(|service| service["name"] == name)
                .map(|service| service["last_swap"].clone())
                .collect(),
            SwapKind::Policy => admin_get(admin, "/policies")
                .await?
                .as_array()
                .into_iter()
                .flatten()
                .filter(|binding| binding["policy"] == name)
                .map(|binding| binding["last_swap"].clone())
                .collect(),
        };
        if swaps.is_empty() {
            anyhow::bail!("the node no longer lists `{name}`; it may have been removed");
        }
        if let Some(rolled_back) = swaps.iter().find(|swap| swap["state"] == "rolled-back") {
            anyhow::bail!(
                "the node rolled `{name}` back to generation {}: {}",
                rolled_back["from_generation"],
                rolled_back["reason"].as_str().unwrap_or("no reason given")
            );
        }
        if swaps.iter().all(|swap| swap["state"] == "serving") {
            return Ok(format!(
                "`{name}` generation {} passed its probation and serves",
                swaps[0]["to_generation"]
            ));
        }
        if started.elapsed() > PROBATION_WAIT {
            anyhow::bail!(
                "`{name}` is still on probation after {PROBATION_WAIT:?}; check `GET {}` on \
                 {admin}",
                match kind {
                    SwapKind::Service => "/services",
                    SwapKind::Policy => "/policies",
                }
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn status(manifest: Option<PathBuf>, admin: Option<std::net::SocketAddr>) -> Result<()> {
    let admin = admin_address(manifest, admin)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (services, registry, queues) = runtime.block_on(async {
        let services = admin_get(admin, "/services").await?;
        let registry = admin_get(admin, "/registry").await?;
        // A node from before queues has no /queues: show the rest.
        let queues = admin_get(admin, "/queues").await.unwrap_or_default();
        anyhow::Ok((services, registry, queues))
    })?;
    println!(
        "node {} (admin {admin})",
        registry["node"].as_str().unwrap_or("?")
    );
    println!(
        "{:<20} {:<10} {:>9} {:>9} {:>7} {:>8}",
        "SERVICE", "VERSION", "IN-FLIGHT", "SERVED", "ERRORS", "REJECTED"
    );
    for service in services.as_array().into_iter().flatten() {
        println!(
            "{:<20} {:<10} {:>9} {:>9} {:>7} {:>8}",
            service["name"].as_str().unwrap_or("?"),
            service["version"].as_str().unwrap_or("?"),
            service["in_flight"],
            service["served"],
            service["errors"],
            service["rejected"]
        );
    }
    let queues = queues.as_array().cloned().unwrap_or_default();
    if !queues.is_empty() {
        println!(
            "{:<20} {:<20} {:>7} {:>9} {:>9} {:>11} {:>6}",
            "QUEUE", "SUBSCRIBER", "DEPTH", "IN-FLIGHT", "DELIVERED", "REDELIVERED", "DEAD"
        );
    }
    for queue in &queues {
        println!(
            "{:<20} {:<20} {:>7} {:>9} {:>9} {:>11} {:>6}",
            queue["name"].as_str().unwrap_or("?"),
            queue["subscriber"].as_str().unwrap_or("?"),
            queue["depth"],
            queue["in_flight"],
            queue["delivered"],
            queue["redelivered"],
            queue["dead_letters_total"]
        );
    }
    let peers = registry["peers"].as_array().cloned().unwrap_or_default();
    println!("peers: {}", peers.len());
    for peer in peers {
        println!(
            "  {} {} {}",
            peer["node"].as_str().unwrap_or("?"),
            peer["address"].as_str().unwrap_or("?"),
            peer["services"]
                .as_array()
                .map(|s| s
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(" "))
                .unwrap_or_default()
        );
    }
    Ok(())
}

async fn admin_get(admin: std::net::SocketAddr, path: &str) -> Result<serde_json::Value> {
    let (_, body) = admin_request(admin, hyper::Method::GET, path, Vec::new()).await?;
    serde_json::from_str(&body).with_context(|| format!("{admin}{path} did not answer JSON"))
}

async fn admin_post(
    admin: std::net::SocketAddr,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, String)> {
    admin_request(admin, hyper::Method::POST, path, body).await
}

async fn admin_request(
    admin: std::net::SocketAddr,
    method: hyper::Method,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, String)> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| {
            format!("no node answers on {admin}: is it running, and is this its admin address?")
        })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", admin.to_string())
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
