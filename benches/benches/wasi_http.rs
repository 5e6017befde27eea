//! The same standard `wasi:http/proxy` hello component (wstd 0.6.8's published `http_server`
//! example, `GET /`) served by a Switchyard node and by `wasmtime serve` (wasmtime-cli 48 from
//! crates.io, pooling allocator on), with the same client and concurrency in the same run,
//! both with a fresh instance per request. Aim: the node at least 2x `wasmtime serve`'s
//! requests/s. The node's own-world hello guest runs beside them for reference.
//!
//! `cargo xtask bench -- --bench wasi_http` installs wasmtime-cli 48.0.8 into
//! `target/tools/wasmtime-48` if it is missing (a 10-15 minute build on 2 cores), or set
//! `WASMTIME` to a `wasmtime` 48 binary. Knobs: `BENCH_SECONDS` per round (default 5),
//! `BENCH_CONNECTIONS` (default 32), `BENCH_ROUNDS` (default 3; the targets alternate, the
//! median of the rounds' own ratios counts).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use switchyard_benches::{
    env_or, line, median, median_of, ratios, run_load, server_and_client_runtimes, summary,
};

fn main() -> Result<()> {
    let seconds: u64 = env_or("BENCH_SECONDS", 5);
    let connections: usize = env_or("BENCH_CONNECTIONS", 32);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let duration = Duration::from_secs(seconds);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let component = guest(&root, "http-wstd-server")?;
    let hello = guest(&root, "hello")?;

    let (servers, client) = server_and_client_runtimes()?;

    let dir = tempfile::tempdir()?;
    let manifest_path = dir.path().join("switchyard.toml");
    std::fs::write(
        &manifest_path,
        format!(
            "[node]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n[telemetry]\n\
             metrics = false\n\n[[service]]\nname = \"wstd\"\nversion = \"1.0.0\"\n\
             component = {:?}\nroutes = [\"GET /\"]\nmax_instances = 512\n\n[[service]]\n\
             name = \"hello\"\nversion = \"1.0.0\"\ncomponent = {:?}\n\
             routes = [\"GET /hello/{{name}}\"]\nmax_instances = 512\n",
            component.display().to_string(),
            hello.display().to_string()
        ),
    )?;
    let manifest = switchyard::Manifest::load(&manifest_path)?;
    let node = servers.block_on(switchyard::Node::start(&manifest))?;
    let node_addr = node.http_addr();
    let serve = WasmtimeServe::start(&wasmtime(&root)?, &component)?;
    client.block_on(wait_for(serve.addr))?;

    for (addr, path) in [
        (serve.addr, "/"),
        (node_addr, "/"),
        (node_addr, "/hello/ada"),
    ] {
        let warm = client.block_on(run_load(addr, path, connections, Duration::from_secs(1)))?;
        if warm.errors > 0 || warm.requests == 0 {
            bail!(
                "warm-up of {addr}{path}: {} errors, {} answers",
                warm.errors,
                warm.requests
            );
        }
    }

    let (mut serve_rounds, mut node_rounds, mut own_rounds) = (Vec::new(), Vec::new(), Vec::new());
    let mut round_ratios = Vec::new();
    for round in 1..=rounds {
        let run = |addr, path| client.block_on(run_load(addr, path, connections, duration));
        // In turns first, so drift on a shared machine falls on both alike.
        let (theirs, ours) = if round % 2 == 1 {
            let theirs = run(serve.addr, "/")?;
            (theirs, run(node_addr, "/")?)
        } else {
            let ours = run(node_addr, "/")?;
            (run(serve.addr, "/")?, ours)
        };
        let own = run(node_addr, "/hello/ada")?;
        println!(
            "round {round}: wasmtime serve {} | switchyard wasi:http {} | switchyard own world {}",
            line(&theirs),
            line(&ours),
            line(&own)
        );
        let errors = theirs.errors + ours.errors + own.errors;
        if errors > 0 {
            bail!("{errors} requests failed in round {round}");
        }
        round_ratios.push(ours.requests_per_second() / theirs.requests_per_second());
        serve_rounds.push(theirs);
        node_rounds.push(ours);
        own_rounds.push(own);
    }
    let (theirs, ours, own) = (
        median(serve_rounds),
        median(node_rounds),
        median(own_rounds),
    );
    let ratio = median_of(round_ratios);
    println!();
    println!("wasi_http ({connections} connections, {seconds}s x {rounds} rounds, median round)");
    println!("  wasmtime serve 48 (pooling)      : {}", line(&theirs));
    println!("  switchyard, wasi:http component   : {}", line(&ours));
    println!("  switchyard, own-world hello guest : {}", line(&own));
    println!(
        "  wasi:http vs wasmtime serve: {} (aim: >= 2x requests/s)",
        ratios(&ours, &theirs)
    );
    println!("    median of the rounds' own ratios: {ratio:.2}x");
    println!("  own world vs wasmtime serve: {}", ratios(&own, &theirs));
    let report = serde_json::json!({
        "bench": "wasi_http",
        "connections": connections,
        "seconds": seconds,
        "rounds": rounds,
        "wasmtime_serve": summary(&theirs),
        "switchyard_wasi_http": summary(&ours),
        "switchyard_own_world": summary(&own),
        "wasi_http_vs_wasmtime_serve": ratios(&ours, &theirs),
        "wasi_http_vs_wasmtime_serve_median_round_ratio": ratio,
        "own_world_vs_wasmtime_serve": ratios(&own, &theirs),
    });
    let out = root.join("target/bench-results");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("wasi_http.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    drop(serve);
    servers.block_on(node.shutdown());
    Ok(())
}

fn guest(root: &Path, name: &str) -> Result<PathBuf> {
    let path = root.join(format!("target/guests/wasm32-wasip2/release/{name}.wasm"));
    if !path.is_file() {
        bail!("{} is missing: run `cargo xtask bench`", path.display());
    }
    Ok(path)
}

/// `$WASMTIME`, else the wasmtime-cli 48 `cargo xtask bench` installs under `target/tools`.
fn wasmtime(root: &Path) -> Result<PathBuf> {
    let path = match std::env::var_os("WASMTIME") {
        Some(path) => PathBuf::from(path),
        None => root.join("target/tools/wasmtime-48/bin/wasmtime"),
    };
    let version = Command::new(&path)
        .arg("--version")
        .output()
        .with_context(|| {
            format!(
                "no wasmtime at {}: run `cargo xtask bench` (it installs wasmtime-cli 48.0.8 \
                 there) or set WASMTIME",
                path.display()
            )
        })?;
    let version = String::from_utf8_lossy(&version.stdout);
    if !version.starts_with("wasmtime 48.") {
        bail!("{} is {}, not wasmtime 48", path.display(), version.trim());
    }
    Ok(path)
}

/// A `wasmtime serve` child, killed on drop.
struct WasmtimeServe {
    child: Child,
    addr: SocketAddr,
}

impl WasmtimeServe {
    fn start(wasmtime: &Path, component: &Path) -> Result<Self> {
        let addr = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            probe.local_addr()?
        };
        let child = Command::new(wasmtime)
            .arg("serve")
            .arg("--addr")
            .arg(addr.to_string())
            .args(["-O", "pooling-allocator=y", "-S", "cli=y"])
            .arg(component)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", wasmtime.display()))?;
        Ok(Self { child, addr })
    }
}

impl Drop for WasmtimeServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_for(addr: SocketAddr) -> Result<()> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("wasmtime serve never listened on {addr}")
}
