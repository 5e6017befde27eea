//! Two figures for resilience policies, each against its baseline in the same run:
//!
//! 1. Latency a wasm circuit breaker adds to a call: the node's `before-call` + `after-call`
//!    round trip into `guests/policy-breaker`, against the same breaker logic in native Rust
//!    (below), both timed per call with the same clock. Aim: at most 2 us more at p50.
//! 2. A call through a chain of three breaker bindings (nested layers, as `policies =
//!    ["a", "b", "c"]` runs them) to a callee that answers at once, against three native
//!    breakers around the same call: the chain's cost per binding should be figure 1's.
//! 3. Time from a swap request (`POST /services/<name>` with a component the node compiled
//!    before, so it comes from the cache) to the first request answered by the new
//!    generation, against the time of a plain request to the same node. Aim: at most 50 ms.
//!
//! `cargo xtask bench -- --bench policy_swap`. Knobs: `BENCH_CALLS` (default 200000),
//! `BENCH_SWAPS` (default 40).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
// Links the shared allocator (the one the `switchyard` binary ships with).
use switchyard_benches::env_or;

fn guest(name: &str) -> Result<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../target/guests/wasm32-wasip2/release/{name}.wasm"
    ));
    if !path.is_file() {
        bail!("{} is missing: run `cargo xtask bench`", path.display());
    }
    Ok(path)
}

/// The breaker of `guests/policy-breaker`, closed-state path, in native Rust.
struct NativeBreaker {
    consecutive_failures: u32,
    failure_rate: f64,
    window: usize,
    min_calls: usize,
    open_until: Option<Instant>,
    consecutive: u32,
    recent: VecDeque<bool>,
}

impl NativeBreaker {
    fn new() -> Self {
        Self {
            consecutive_failures: 1000,
            failure_rate: 0.9,
            window: 20,
            min_calls: 10,
            open_until: None,
            consecutive: 0,
            recent: VecDeque::new(),
        }
    }

    fn before(&mut self) -> bool {
        self.open_until.is_none_or(|until| Instant::now() >= until)
    }

    fn after(&mut self, status: u16) {
        let failed = status >= 500;
        self.consecutive = if failed { self.consecutive + 1 } else { 0 };
        self.recent.push_back(failed);
        while self.recent.len() > self.window {
            self.recent.pop_front();
        }
        let failures = self.recent.iter().filter(|f| **f).count();
        let rate = failures as f64 / self.recent.len().max(1) as f64;
        if self.consecutive >= self.consecutive_failures
            || (self.recent.len() >= self.min_calls && rate >= self.failure_rate)
        {
            self.open_until = Some(Instant::now() + Duration::from_secs(1));
        }
    }
}

fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).context("histogram")
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// One row of per-call timings: p50 and p99 in microseconds.
fn print_row(label: &str, h: &Histogram<u64>) {
    println!(
        "  {label:<16} p50 {:>7.2} us  p99 {:>7.2} us",
        us(h, 0.5),
        us(h, 0.99)
    );
}

async fn policy_overhead(calls: usize) -> Result<()> {
    let probe = switchyard::bench::PolicyProbe::load(
        &guest("policy_breaker")?,
        &[("consecutive_failures", "1000"), ("failure_rate", "0.9")],
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let mut native = NativeBreaker::new();
    let (mut wasm_h, mut native_h) = (histogram()?, histogram()?);
    // Every 10th call fails: the breaker counts and windows, but stays closed.
    let status = |i: usize| if i % 10 == 9 { 503 } else { 200 };
    for i in 0..calls / 10 {
        probe.around_call(status(i)).await;
        if native.before() {
            native.after(status(i));
        }
    }
    // Interleaved in blocks, so both see the same machine.
    for block in 0..20 {
        for i in 0..calls / 20 {
            let started = Instant::now();
            let through = probe.around_call(status(i)).await;
            wasm_h.record(started.elapsed().as_nanos() as u64)?;
            if !through {
                bail!("the breaker opened (block {block}, call {i})");
            }
        }
        for i in 0..calls / 20 {
            let started = Instant::now();
            if std::hint::black_box(native.before()) {
                native.after(std::hint::black_box(status(i)));
            }
            native_h.record(started.elapsed().as_nanos() as u64)?;
        }
    }
    println!("circuit breaker around one call ({calls} calls each, per-call timing):");
    print_row("native Rust", &native_h);
    print_row("wasm policy", &wasm_h);
    println!(
        "  added by wasm    p50 {:>7.2} us  (aim <= 2 us)",
        us(&wasm_h, 0.5) - us(&native_h, 0.5)
    );
    Ok(())
}

async fn chain_overhead(calls: usize) -> Result<()> {
    const DEPTH: usize = 3;
    let probe = switchyard::bench::ChainProbe::load(
        &guest("policy_breaker")?,
        &[("consecutive_failures", "1000"), ("failure_rate", "0.9")],
        DEPTH,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let mut natives: Vec<NativeBreaker> = (0..DEPTH).map(|_| NativeBreaker::new()).collect();
    let (mut wasm_h, mut native_h) = (histogram()?, histogram()?);
    // The same shape natively: each layer asks before, the callee answers, each asks after.
    let native_call = |natives: &mut Vec<NativeBreaker>| {
        let through = natives.iter_mut().all(|breaker| breaker.before());
        let status = std::hint::black_box(if through { 200 } else { 503 });
        for breaker in natives.iter_mut().rev() {
            breaker.after(status);
        }
        status
    };
    for _ in 0..calls / 10 {
        probe.call().await.map_err(anyhow::Error::msg)?;
        native_call(&mut natives);
    }
    for _ in 0..20 {
        for _ in 0..calls / 20 {
            let started = Instant::now();
            let status = probe.call().await.map_err(anyhow::Error::msg)?;
            wasm_h.record(started.elapsed().as_nanos() as u64)?;
            if status != 200 {
                bail!("the chain answered {status}");
            }
        }
        for _ in 0..calls / 20 {
            let started = Instant::now();
            std::hint::black_box(native_call(&mut natives));
            native_h.record(started.elapsed().as_nanos() as u64)?;
        }
    }
    let added = us(&wasm_h, 0.5) - us(&native_h, 0.5);
    println!("a call through {DEPTH} breaker bindings ({calls} calls each, per-call timing):");
    print_row("native Rust", &native_h);
    print_row("wasm chain", &wasm_h);
    println!(
        "  added per layer  p50 {:>7.2} us  (aim <= 2 us, figure 1's)",
        added / DEPTH as f64
    );
    Ok(())
}

/// A request to the node's admin API at `addr`, with the node's token from `token_file`.
async fn admin_request(
    addr: std::net::SocketAddr,
    token_file: &std::path::Path,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>)> {
    let token = std::fs::read_to_string(token_file)?;
    request_with(addr, "POST", path, body, Some(token.trim())).await
}

async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>)> {
    request_with(addr, method, path, body, None).await
}

async fn request_with(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Vec<u8>,
    token: Option<&str>,
) -> Result<(u16, Vec<u8>)> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    Ok((
        status,
        response.into_body().collect().await?.to_bytes().to_vec(),
    ))
}

async fn swap_time(swaps: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let manifest_path = dir.path().join("switchyard.toml");
    std::fs::write(
        &manifest_path,
        format!(
            "[node]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n[[service]]\n\
             name = \"greet\"\nversion = \"1.0.0\"\ncomponent = {:?}\nroutes = [\"GET /hello/{{name}}\"]\n",
            guest("hello")?.display().to_string()
        ),
    )?;
    let node = switchyard::Node::start(&switchyard::Manifest::load(&manifest_path)?).await?;
    let versions = [
        (std::fs::read(guest("hello_v2")?)?, &b"Hello v2, x!\n"[..]),
        (std::fs::read(guest("hello")?)?, &b"Hello, x!\n"[..]),
    ];
    // The first swap of each version compiles it into the cache; the timed ones load it.
    for (component, _) in &versions {
        admin_request(
            node.admin_addr(),
            node.admin_token_file(),
            "/services/greet",
            component.clone(),
        )
        .await?;
    }
    let (mut swap_h, mut plain_h) = (histogram()?, histogram()?);
    for i in 0..swaps {
        let started = Instant::now();
        request(node.http_addr(), "GET", "/hello/x", Vec::new()).await?;
        plain_h.record(started.elapsed().as_nanos() as u64)?;

        let (component, expected) = &versions[i % 2];
        let started = Instant::now();
        let (status, report) = admin_request(
            node.admin_addr(),
            node.admin_token_file(),
            "/services/greet",
            component.clone(),
        )
        .await?;
        if status != 200 {
            bail!("swap refused: {}", String::from_utf8_lossy(&report));
        }
        loop {
            let (_, body) = request(node.http_addr(), "GET", "/hello/x", Vec::new()).await?;
            if body == *expected {
                break;
            }
            if started.elapsed() > Duration::from_secs(5) {
                bail!("the new generation never answered");
            }
        }
        swap_h.record(started.elapsed().as_nanos() as u64)?;
        // Past probation, so the next swap does not race the watcher.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.shutdown().await;
    println!("swap to a precompiled component ({swaps} swaps, request to first answer from it):");
    println!(
        "  plain request    p50 {:>7.2} ms  max {:>7.2} ms",
        us(&plain_h, 0.5) / 1000.0,
        plain_h.max() as f64 / 1e6
    );
    println!(
        "  swap             p50 {:>7.2} ms  max {:>7.2} ms  (aim <= 50 ms)",
        us(&swap_h, 0.5) / 1000.0,
        swap_h.max() as f64 / 1e6
    );
    Ok(())
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        policy_overhead(env_or("BENCH_CALLS", 200_000)).await?;
        chain_overhead(env_or("BENCH_CALLS", 200_000) / 2).await?;
        swap_time(env_or("BENCH_SWAPS", 40)).await
    })
}
