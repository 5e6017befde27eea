//! Remote calls guest → guest across two nodes (QUIC, mutual TLS), against a plain quinn
//! request/response echo with the same TLS configuration and a plain hyper HTTP/1.1 echo,
//! with the same concurrency, in the same run. The callee runs on a fresh instance per call
//! (the default) and, in a second round, on reused instances (`requests_per_instance`). For
//! scale, the same two rounds call an instance on the caller's own node (in-process, no
//! socket): what a remote call costs on top of the callee itself.
//!
//! Both nodes count metrics and export 1 % of their traces over OTLP (to a sink in this
//! process); a second pair, the same with telemetry off (`metrics = false`, no `otlp`), runs
//! the remote rounds again: what telemetry costs (aim: at most 5 % fewer calls/s).
//!
//! Each set of rounds runs at 8 concurrent callers (load: calls/s and latency under it) and
//! at 1 (one call at a time: latency with nothing queued). Every row also gives the process
//! CPU time per call: at 8 callers on a small machine the rounds are CPU-bound, and a remote
//! call cannot cost less than the echo's exchange plus the same call made on one node, which
//! says how far from its floor a row is.
//!
//! `cargo xtask bench -- --bench rpc_remote`. Knobs: `BENCH_CALLS` per caller (default
//! 2000), `BENCH_CALLERS` the concurrency levels (default `8,1`), and `BENCH_PROFILE_ONLY` =
//! `hello` (fresh callee), `hello-reuse`, `local`, `local-fresh` or `quinn` to run that one
//! round alone (at the first level) under a profiler.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use switchyard::bench::{Identity, SERVER_NAME};
use switchyard_benches::{PlainReply, RoundClock, Timed, env_or, start_plain_hyper, timed_loop};

const PAYLOAD: &[u8] = b"Hello, bench!\n";

/// A service the rounds call: its name, the method its route takes, the round's label, and
/// the `BENCH_PROFILE_ONLY` value that runs it alone.
struct Callee {
    service: &'static str,
    method: &'static str,
    label: &'static str,
    profile: &'static str,
}

/// On node B: a fresh instance per call (the default), and reused instances.
const REMOTE: [Callee; 2] = [
    Callee {
        service: "hello",
        method: "GET /hello/bench",
        label: "switchyard guest -> guest, fresh callee",
        profile: "hello",
    },
    Callee {
        service: "hello-reuse",
        method: "GET /again/bench",
        label: "switchyard guest -> guest, callee reused",
        profile: "hello-reuse",
    },
];

/// The same two on the caller's own node A, in the same order as [`REMOTE`].
const LOCAL: [Callee; 2] = [
    Callee {
        service: "hello-here-fresh",
        method: "GET /here-fresh/bench",
        label: "same node, fresh callee",
        profile: "local-fresh",
    },
    Callee {
        service: "hello-here",
        method: "GET /here/bench",
        label: "same node, callee reused",
        profile: "local",
    },
];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let calls: usize = env_or("BENCH_CALLS", 2000);
    let levels: Vec<usize> = std::env::var("BENCH_CALLERS")
        .unwrap_or_else(|_| "8,1".into())
        .split(',')
        .map(|level| level.trim().parse())
        .collect::<Result<_, _>>()
        .context("BENCH_CALLERS: a comma-separated list of caller counts, e.g. `8,1`")?;
    let callers = *levels.first().context("BENCH_CALLERS names no level")?;
    let dir = tempfile::tempdir()?;
    let guests =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guests/wasm32-wasip2/release");
    if !guests.join("faulty.wasm").is_file() {
        bail!("guests are missing: run `cargo xtask bench`");
    }
    let service = |name: &str, guest: &str, route: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nversion = \"1.0.0\"\ncomponent = {:?}\nroutes = [\"{route}\"]\n\
             max_instances = 256\n",
            guests.join(format!("{guest}.wasm")).display().to_string()
        )
    };
    let manifest = |name: &str, node: &str, services: &str| -> Result<switchyard::Manifest> {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "[node]\n{node}\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
                 data_dir = \"{name}-data\"\n\n{services}"
            ),
        )?;
        Ok(switchyard::Manifest::load(&path)?)
    };
    let pair =
        async |prefix: &str, telemetry: &str| -> Result<(switchyard::Node, switchyard::Node)> {
            let b = switchyard::Node::start(&manifest(
                &format!("{prefix}b"),
                &format!("name = \"{prefix}b\"\nquic = \"127.0.0.1:0\""),
                &format!(
                    "{}{}requests_per_instance = 100000\n{telemetry}",
                    service("hello", "hello", "GET /hello/{name}"),
                    service("hello-reuse", "hello", "GET /again/{name}")
                ),
            )?)
            .await?;
            let b_quic = b.quic_addr().context("node b has no QUIC address")?;
            let a = switchyard::Node::start(&manifest(
                &format!("{prefix}a"),
                &format!("name = \"{prefix}a\"\nquic = \"127.0.0.1:0\"\nseeds = [\"{b_quic}\"]"),
                &format!(
                    "{}{}{}requests_per_instance = 100000\n{telemetry}",
                    service("faulty", "faulty", "POST /f/{fault}/{arg}"),
                    service("hello-here-fresh", "hello", "GET /here-fresh/{name}"),
                    service("hello-here", "hello", "GET /here/{name}")
                ),
            )?)
            .await?;
            Ok((a, b))
        };
    let collector = start_plain_hyper(PlainReply::Empty).await?;
    let (a, b) = pair(
        "",
        &format!("[telemetry]\notlp = \"http://{collector}\"\ntrace_sampling = 0.01\n"),
    )
    .await?;
    let (quiet_a, quiet_b) = pair("quiet-", "[telemetry]\nmetrics = false\n").await?;
    tokio::time::sleep(Duration::from_millis(1200)).await; // discovery

    if let Ok(only) = std::env::var("BENCH_PROFILE_ONLY") {
        // For profilers: one round, no ratios.
        let outcome = match REMOTE.iter().chain(&LOCAL).find(|c| c.profile == only) {
            Some(callee) => switchyard_calls(a.http_addr(), callee, calls, callers).await?,
            None if only == "quinn" => quinn_echo(calls, callers).await?,
            None => {
                let known: Vec<_> = REMOTE.iter().chain(&LOCAL).map(|c| c.profile).collect();
                bail!("BENCH_PROFILE_ONLY={only}: use one of {known:?} or `quinn`")
            }
        };
        println!("  {}", outcome.line("calls"));
        return Ok(());
    }
    // Warm-up: every callee's code and every connection.
    for callee in REMOTE.iter().chain(&LOCAL) {
        switchyard_calls(a.http_addr(), callee, 50, callers).await?;
    }
    for callee in &REMOTE {
        switchyard_calls(quiet_a.http_addr(), callee, 50, callers).await?;
    }
    println!("rpc_remote ({calls} sequential calls per caller)");
    for callers in levels {
        // Each remote round runs back to back with its telemetry-off twin, in turns first, so
        // drift on a shared machine falls on both alike.
        let mut rounds = Vec::new();
        let mut quiet = Vec::new();
        for (turn, callee) in REMOTE.iter().enumerate() {
            let on = async || switchyard_calls(a.http_addr(), callee, calls, callers).await;
            let off = async || switchyard_calls(quiet_a.http_addr(), callee, calls, callers).await;
            if turn % 2 == 0 {
                rounds.push(on().await?);
                quiet.push(off().await?);
            } else {
                quiet.push(off().await?);
                rounds.push(on().await?);
            }
        }
        let quinn = quinn_echo(calls, callers).await?;
        let hyper = hyper_echo(calls, callers).await?;
        let mut local = Vec::new();
        for callee in &LOCAL {
            local.push(switchyard_calls(a.http_addr(), callee, calls, callers).await?);
        }
        println!(" {callers} concurrent caller(s):");
        for outcome in rounds.iter().chain([&quinn, &hyper]).chain(&local) {
            println!("  {}", outcome.line("calls"));
        }
        for (ours, off) in rounds.iter().zip(&quiet) {
            println!(
                "  {}: telemetry (metrics, 1 % traces) on vs off: calls/s {:.3}x (aim >= 0.95), \
                 p50 {:.2}x (off: {:.0} calls/s)",
                ours.name,
                ours.rate() / off.rate(),
                ours.latency_us(0.5) as f64 / off.latency_us(0.5) as f64,
                off.rate()
            );
        }
        for (ours, here) in rounds.iter().zip(&local) {
            let p50 = ours.latency_us(0.5) as f64 / quinn.latency_us(0.5) as f64;
            let rate = ours.rate() / quinn.rate();
            println!(
                "  {} vs quinn echo: p50 {p50:.2}x (aim <= 1.5), calls/s {rate:.2}x (aim >= 0.5)",
                ours.name
            );
            // No remote call costs less than the echo's exchange plus the same call on one
            // node; with several callers the rounds are CPU-bound, and this is how low its
            // p50 can go. (One caller leaves workers idle, and waking them costs the echo more
            // CPU than its exchange: no floor there.)
            if callers == 1 {
                continue;
            }
            let (echo, same_node) = (quinn.cpu_us_each(), here.cpu_us_each());
            println!(
                "    cpu {:.1} us per call; floor {:.1} (echo's exchange {echo:.1} + same call on one node {same_node:.1})",
                ours.cpu_us_each(),
                echo + same_node
            );
        }
    }
    for node in [a, b, quiet_a, quiet_b] {
        node.shutdown().await;
    }
    Ok(())
}

/// Each caller is one HTTP request to node A whose guest makes `calls` sequential calls to
/// `callee` and reports each call's duration as the guest measured it.
async fn switchyard_calls(
    http: SocketAddr,
    callee: &Callee,
    calls: usize,
    callers: usize,
) -> Result<Timed> {
    let (service, method) = (callee.service, callee.method);
    let clock = RoundClock::start();
    let mut tasks = Vec::new();
    for _ in 0..callers {
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(http).await?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            let request = hyper::Request::post(format!("/f/calls/{calls}"))
                .header("host", "bench")
                .body(Full::new(Bytes::from(format!("{service}\n{method}"))))?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            if status != 200 {
                bail!("caller failed: {status} {}", String::from_utf8_lossy(&body));
            }
            Ok::<Vec<u64>, anyhow::Error>(serde_json::from_slice(&body)?)
        }));
    }
    let mut histogram = Histogram::new_with_bounds(1, 60_000_000, 3)?;
    let mut total = 0;
    for task in tasks {
        for micros in task.await?? {
            histogram.record(micros.max(1))?;
            total += 1;
        }
    }
    Ok(clock.finish(callee.label, total, histogram))
}

/// Plain quinn: one stream per request, the server echoes what it read. Same TLS as nodes.
async fn quinn_echo(calls: usize, callers: usize) -> Result<Timed> {
    let identity = Identity::development("bench")?;
    let server = quinn::Endpoint::server(identity.server_config()?, "127.0.0.1:0".parse()?)?;
    let addr = server.local_addr()?;
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else {
                    return;
                };
                while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                    tokio::spawn(async move {
                        if let Ok(bytes) = recv.read_to_end(1 << 20).await {
                            let _ = send.write_all(&bytes).await;
                            let _ = send.finish();
                        }
                    });
                }
            });
        }
    });
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    client.set_default_client_config(identity.client_config()?);
    let connection = client.connect(addr, SERVER_NAME)?.await?;
    let connection = Arc::new(connection);
    timed_loop("plain quinn echo", calls, callers, move || {
        let connection = connection.clone();
        async move {
            let (mut send, mut recv) = connection.open_bi().await?;
            send.write_all(PAYLOAD).await?;
            send.finish()?;
            let echoed = recv.read_to_end(1 << 20).await?;
            anyhow::ensure!(echoed == PAYLOAD, "echo mismatch");
            Ok(())
        }
    })
    .await
}

/// Plain hyper HTTP/1.1 with keep-alive: one connection per caller.
async fn hyper_echo(calls: usize, callers: usize) -> Result<Timed> {
    let addr = switchyard_benches::start_plain_hyper(switchyard_benches::PlainReply::Echo).await?;
    let clock = RoundClock::start();
    let mut tasks = Vec::new();
    for _ in 0..callers {
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            // A plain list, as `timed_loop` keeps: a histogram per caller inside the round
            // costs it page faults.
            let mut latencies_us = Vec::with_capacity(calls);
            for _ in 0..calls {
                let call_started = Instant::now();
                let request = hyper::Request::post("/echo")
                    .header("host", "bench")
                    .body(Full::new(Bytes::from_static(PAYLOAD)))?;
                let body = sender
                    .send_request(request)
                    .await?
                    .into_body()
                    .collect()
                    .await?
                    .to_bytes();
                anyhow::ensure!(body.as_ref() == PAYLOAD, "echo mismatch");
                latencies_us.push((call_started.elapsed().as_micros() as u64).max(1));
            }
            Ok::<_, anyhow::Error>(latencies_us)
        }));
    }
    let mut histogram = Histogram::new_with_bounds(1, 60_000_000, 3)?;
    for task in tasks {
        for latency in task.await?? {
            histogram.record(latency)?;
        }
    }
    Ok(clock.finish(
        "plain hyper HTTP/1.1 echo",
        (calls * callers) as u64,
        histogram,
    ))
}
