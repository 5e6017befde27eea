//! Requests/s and p50/p99 latency through the hello guest, against a plain hyper server
//! answering the same text, with the same client and concurrency, in the same run. The guest
//! runs twice: with a fresh instance per request (the default) and with instance reuse
//! (`requests_per_instance`). The node counts metrics and exports 1 % of its traces over
//! OTLP (to a sink in this process); a second node, the same with telemetry off
//! (`metrics = false`, no `otlp`), measures what that costs (aim: at most 5 % fewer
//! requests/s).
//!
//! `cargo xtask bench` (or `cargo bench -p switchyard-benches --bench http_hello`).
//! Knobs: `BENCH_SECONDS` per round (default 5), `BENCH_CONNECTIONS` (default 32),
//! `BENCH_ROUNDS` (default 3; the targets alternate each round, the median round counts).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use switchyard_benches::{
    LoadReport, PlainReply, env_or, line, median, median_of, ratios, run_load,
    server_and_client_runtimes, start_plain_hyper, summary,
};

fn main() -> Result<()> {
    let seconds: u64 = env_or("BENCH_SECONDS", 5);
    let connections: usize = env_or("BENCH_CONNECTIONS", 32);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let duration = Duration::from_secs(seconds);

    let (servers, client) = server_and_client_runtimes()?;

    let dir = tempfile::tempdir()?;
    let (node, plain) = servers.block_on(async {
        let collector = start_plain_hyper(PlainReply::Empty).await?;
        start_servers(
            dir.path(),
            &format!("[telemetry]\notlp = \"http://{collector}\"\ntrace_sampling = 0.01\n"),
        )
        .await
    })?;
    let quiet_dir = tempfile::tempdir()?;
    // Its plain server goes unused: the baseline is the first one.
    let (quiet, _) = servers.block_on(async {
        start_servers(quiet_dir.path(), "[telemetry]\nmetrics = false\n").await
    })?;
    let quiet_addr = quiet.http_addr();

    // Warm up every target (compiled code, pool slots, connections).
    let addr = node.http_addr();
    let warm = Duration::from_secs(1);
    for (target, path) in [
        (plain, "/hello/ada"),
        (addr, "/hello/ada"),
        (addr, "/reuse/ada"),
        (quiet_addr, "/hello/ada"),
        (quiet_addr, "/reuse/ada"),
    ] {
        client.block_on(run_load(target, path, connections, warm))?;
    }

    let mut plain_rounds = Vec::new();
    let mut fresh_rounds = Vec::new();
    let mut reuse_rounds = Vec::new();
    let mut fresh_off_rounds = Vec::new();
    let mut reuse_off_rounds = Vec::new();
    let (mut fresh_ratios, mut reuse_ratios) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let p = client.block_on(run_load(plain, "/hello/ada", connections, duration))?;
        // On and off run back to back, in turns first, so drift on a shared machine falls
        // on both alike; their ratio is taken per round.
        let pair = |path: &'static str| -> Result<(LoadReport, LoadReport)> {
            let on = || client.block_on(run_load(addr, path, connections, duration));
            let off = || client.block_on(run_load(quiet_addr, path, connections, duration));
            Ok(if round % 2 == 1 {
                let on = on()?;
                (on, off()?)
            } else {
                let off = off()?;
                (on()?, off)
            })
        };
        let (f, fo) = pair("/hello/ada")?;
        let (r, ro) = pair("/reuse/ada")?;
        println!(
            "round {round}: plain {} | fresh {} | reuse {} | telemetry off: fresh {} | reuse {}",
            line(&p),
            line(&f),
            line(&r),
            line(&fo),
            line(&ro)
        );
        let errors = [&p, &f, &r, &fo, &ro].iter().map(|r| r.errors).sum::<u64>();
        if errors > 0 {
            bail!("{errors} requests failed in round {round}");
        }
        fresh_ratios.push(f.requests_per_second() / fo.requests_per_second());
        reuse_ratios.push(r.requests_per_second() / ro.requests_per_second());
        plain_rounds.push(p);
        fresh_rounds.push(f);
        reuse_rounds.push(r);
        fresh_off_rounds.push(fo);
        reuse_off_rounds.push(ro);
    }
    let plain = median(plain_rounds);
    let fresh = median(fresh_rounds);
    let reuse = median(reuse_rounds);
    let fresh_off = median(fresh_off_rounds);
    let reuse_off = median(reuse_off_rounds);
    println!();
    println!("http_hello ({connections} connections, {seconds}s x {rounds} rounds, median round)");
    println!("  plain hyper                           : {}", line(&plain));
    println!("  switchyard, fresh instance per request: {}", line(&fresh));
    println!("  switchyard, requests_per_instance=1e5 : {}", line(&reuse));
    println!("  aim: >= 0.5x the plain requests/s, p99 <= 2.0x");
    println!("  fresh vs plain: {}", ratios(&fresh, &plain));
    println!("  reuse vs plain: {}", ratios(&reuse, &plain));
    println!("  telemetry (metrics, 1 % traces) on vs off (aim: >= 0.95x requests/s):");
    println!("    fresh: {}", ratios(&fresh, &fresh_off));
    println!("    reuse: {}", ratios(&reuse, &reuse_off));
    let (fresh_ratio, reuse_ratio) = (median_of(fresh_ratios), median_of(reuse_ratios));
    println!(
        "    median of the rounds' own ratios: fresh {fresh_ratio:.3}x, reuse {reuse_ratio:.3}x"
    );
    let report = serde_json::json!({
        "bench": "http_hello",
        "connections": connections,
        "seconds": seconds,
        "rounds": rounds,
        "plain": summary(&plain),
        "switchyard_fresh": summary(&fresh),
        "switchyard_reuse": summary(&reuse),
        "fresh_vs_plain": ratios(&fresh, &plain),
        "reuse_vs_plain": ratios(&reuse, &plain),
        "switchyard_fresh_telemetry_off": summary(&fresh_off),
        "switchyard_reuse_telemetry_off": summary(&reuse_off),
        "fresh_telemetry_on_vs_off": ratios(&fresh, &fresh_off),
        "reuse_telemetry_on_vs_off": ratios(&reuse, &reuse_off),
        "fresh_telemetry_on_vs_off_median_round_ratio": fresh_ratio,
        "reuse_telemetry_on_vs_off_median_round_ratio": reuse_ratio,
    });
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("http_hello.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    servers.block_on(node.shutdown());
    servers.block_on(quiet.shutdown());
    Ok(())
}

/// A node serving `hello` fresh and reused, with `extra` manifest lines, and a plain server.
async fn start_servers(dir: &Path, extra: &str) -> Result<(switchyard::Node, SocketAddr)> {
    let guest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/guests/wasm32-wasip2/release/hello.wasm");
    if !guest.is_file() {
        bail!("{} is missing: run `cargo xtask bench`", guest.display());
    }
    let manifest_path = dir.join("switchyard.toml");
    std::fs::write(
        &manifest_path,
        format!(
            "[node]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n[[service]]\n\
             name = \"hello\"\nversion = \"1.0.0\"\ncomponent = {:?}\n\
             routes = [\"GET /hello/{{name}}\"]\nmax_instances = 512\n\n[[service]]\n\
             name = \"hello-reuse\"\nversion = \"1.0.0\"\ncomponent = {:?}\n\
             routes = [\"GET /reuse/{{name}}\"]\nmax_instances = 512\n\
             requests_per_instance = 100000\n{extra}",
            guest.display().to_string(),
            guest.display().to_string()
        ),
    )?;
    let manifest = switchyard::Manifest::load(&manifest_path)?;
    let node = switchyard::Node::start(&manifest).await?;
    let plain = start_plain_hyper(PlainReply::Hello).await?;
    Ok((node, plain))
}
