//! A small HTTP/1.1 load generator shared by the benchmarks: `connections` keep-alive
//! connections, each sending requests back to back for a fixed time, latencies in an HDR
//! histogram. The same client runs against Switchyard and against its baseline, so the ratio
//! is what matters on a shared, noisy machine.

/// The allocator the `switchyard` binary ships with, for every measurement in a run (our
/// side and its baseline alike), so ratios compare like with like.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::convert::Infallible;

use anyhow::{Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// The outcome of one load run.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub histogram: Histogram<u64>,
}

impl LoadReport {
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// Latency at `quantile` (0..=1), in microseconds.
    pub fn latency_us(&self, quantile: f64) -> u64 {
        self.histogram.value_at_quantile(quantile)
    }
}

/// Sends `GET path` on `connections` connections for `duration`; each 200 with a body counts.
pub async fn run_load(
    addr: SocketAddr,
    path: &str,
    connections: usize,
    duration: Duration,
) -> Result<LoadReport> {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let path = path.to_owned();
        tasks.push(tokio::spawn(async move {
            connection_loop(addr, &path, deadline).await
        }));
    }
    let mut total = LoadReport {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        histogram: Histogram::new_with_bounds(1, 60_000_000, 3)?,
    };
    for task in tasks {
        let (requests, errors, histogram) = task.await.context("load task panicked")??;
        total.requests += requests;
        total.errors += errors;
        total.histogram.add(histogram)?;
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

async fn connection_loop(
    addr: SocketAddr,
    path: &str,
    deadline: Instant,
) -> Result<(u64, u64, Histogram<u64>)> {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let (mut requests, mut errors) = (0, 0);
    while Instant::now() < deadline {
        let request = hyper::Request::get(path)
            .header("host", "bench")
            .body(Empty::<Bytes>::new())?;
        let started = Instant::now();
        let response = sender.send_request(request).await?;
        let ok = response.status() == 200;
        let body = response.into_body().collect().await?.to_bytes();
        histogram.record((started.elapsed().as_micros() as u64).max(1))?;
        if ok && !body.is_empty() {
            requests += 1;
        } else {
            errors += 1;
        }
    }
    Ok((requests, errors, histogram))
}

/// What the plain hyper baseline answers.
#[derive(Debug, Clone, Copy)]
pub enum PlainReply {
    /// `Hello, <last path segment>!\n` as text, like the hello guest.
    Hello,
    /// The request body.
    Echo,
    /// Nothing, `200`: an OTLP/HTTP collector's answer (an empty export response).
    Empty,
}

/// A plain hyper 1 HTTP/1.1 server on a free loopback port: the baseline the benchmarks
/// compare Switchyard with.
pub async fn start_plain_hyper(reply: PlainReply) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr().context("no local address")?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| async move {
                        let response = match reply {
                            PlainReply::Hello => {
                                let name =
                                    request.uri().path().rsplit('/').next().unwrap_or("world");
                                let mut response = hyper::Response::new(Full::new(Bytes::from(
                                    format!("Hello, {name}!\n"),
                                )));
                                response.headers_mut().insert(
                                    hyper::header::CONTENT_TYPE,
                                    hyper::header::HeaderValue::from_static(
                                        "text/plain; charset=utf-8",
                                    ),
                                );
                                response
                            }
                            PlainReply::Empty => hyper::Response::new(Full::new(Bytes::new())),
                            PlainReply::Echo => {
                                let body =
                                    request.into_body().collect().await.map(|b| b.to_bytes());
                                hyper::Response::new(Full::new(body.unwrap_or_default()))
                            }
                        };
                        Ok::<_, Infallible>(response)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Calls or sends timed one by one: how many, over how long, each one's latency, and the CPU
/// time the whole process spent meanwhile.
pub struct Timed {
    pub name: &'static str,
    pub count: u64,
    pub elapsed: Duration,
    pub histogram: Histogram<u64>,
    /// CPU time of every thread of the process during the round: both sides of each exchange
    /// run in this process, so this is what one round cost the machine, whoever did the work.
    pub cpu: Duration,
}

impl Timed {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }

    /// Latency at `quantile` (0..=1), in microseconds.
    pub fn latency_us(&self, quantile: f64) -> u64 {
        self.histogram.value_at_quantile(quantile)
    }

    /// CPU time per operation, in microseconds. Unlike latency and rate, this hardly moves
    /// with what else the machine runs, so it says best where a difference comes from.
    pub fn cpu_us_each(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.count.max(1) as f64
    }

    /// One aligned report line, `unit` naming what was counted (`calls`, `sends`).
    pub fn line(&self, unit: &str) -> String {
        format!(
            "{:<42} {:>8.0} {unit}/s  p50 {:>6} us  p99 {:>6} us  cpu {:>5.1} us each",
            self.name,
            self.rate(),
            self.latency_us(0.5),
            self.latency_us(0.99),
            self.cpu_us_each()
        )
    }
}

/// Wall and process CPU time since a round started.
pub struct RoundClock {
    wall: Instant,
    cpu: Duration,
}

impl RoundClock {
    pub fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: process_cpu_time(),
        }
    }

    /// The round's outcome: `count` operations with latencies in `histogram`.
    pub fn finish(self, name: &'static str, count: u64, histogram: Histogram<u64>) -> Timed {
        Timed {
            name,
            count,
            elapsed: self.wall.elapsed(),
            histogram,
            cpu: process_cpu_time().saturating_sub(self.cpu),
        }
    }
}

/// CPU time used so far by all threads of this process.
fn process_cpu_time() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

/// `tasks` concurrent tasks, each awaiting `make()` `each` times in a row, timing each.
pub async fn timed_loop<F, Fut>(
    name: &'static str,
    each: usize,
    tasks: usize,
    make: F,
) -> Result<Timed>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let clock = RoundClock::start();
    let mut running = Vec::new();
    for _ in 0..tasks {
        let make = make.clone();
        // A plain list per task, merged into one histogram at the end: a histogram is about
        // 140 KB of zeroed counts, and hundreds of them inside the round cost it tens of
        // milliseconds of page faults (measured: 12% of a pub/sub round's CPU at 256
        // publishers).
        running.push(tokio::spawn(async move {
            let mut latencies_us = Vec::with_capacity(each);
            for _ in 0..each {
                let one = Instant::now();
                make().await?;
                latencies_us.push((one.elapsed().as_micros() as u64).max(1));
            }
            Ok::<_, anyhow::Error>(latencies_us)
        }));
    }
    let mut histogram = Histogram::new_with_bounds(1, 60_000_000, 3)?;
    for task in running {
        for latency in task.await?? {
            histogram.record(latency)?;
        }
    }
    Ok(clock.finish(name, (each * tasks) as u64, histogram))
}

/// The value of environment variable `key` parsed as `T` (a bench's knob), else `default`.
pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Where benches that write to disk keep their files: `BENCH_DIR`, else `target/bench-data`
/// (created). It must be on disk: a tmpfs makes every sync free.
pub fn data_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::var_os("BENCH_DIR").map_or_else(
        || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data"),
        std::path::PathBuf::from,
    );
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the bench data dir {}", dir.display()))?;
    Ok(dir)
}

/// nats-server (the Debian package) on a free loopback port, stopped when dropped: the
/// baseline of the messaging benchmarks, and the server of the NATS backend's.
pub struct NatsServer {
    child: tokio::process::Child,
    /// Its JetStream store, when it has one.
    _store: Option<tempfile::TempDir>,
    pub url: String,
}

impl NatsServer {
    /// Core NATS, with `more` arguments (e.g. a cluster's).
    pub async fn start_with(more: &[&str]) -> Result<Self> {
        Self::spawn(more, None).await
    }

    /// With JetStream, its store in a new directory under `base` (on disk).
    pub async fn start_jetstream(base: &std::path::Path) -> Result<Self> {
        let store = tempfile::tempdir_in(base)?;
        let dir = store.path().display().to_string();
        Self::spawn(&["-js", "-sd", &dir], Some(store)).await
    }

    async fn spawn(more: &[&str], store: Option<tempfile::TempDir>) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = tokio::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(more)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context(
                "cannot start nats-server (the Debian package `nats-server`; `cargo xtask \
                 bench` installs it as root)",
            )?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "nats-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self {
            child,
            _store: store,
            url: format!("nats://{addr}"),
        })
    }

    /// The CPU time the server has used so far (user and system, from `/proc`; Linux only),
    /// to set beside a client's per message.
    pub fn cpu_time(&self) -> Option<Duration> {
        let pid = self.child.id()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The fields after the command (which may hold spaces) in parentheses.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        let per_second = rustix::param::clock_ticks_per_second();
        Some(Duration::from_nanos(
            ticks.checked_mul(1_000_000_000)? / per_second,
        ))
    }
}

/// Polls `done` every 200 us until it holds; fails naming `what` after two minutes.
pub async fn wait_until(what: &str, done: impl Fn() -> bool) -> Result<()> {
    let started = Instant::now();
    while !done() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "gave up waiting: {what}"
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    Ok(())
}

/// One load run as a line of a report.
pub fn line(report: &LoadReport) -> String {
    format!(
        "{:>8.0} req/s  p50 {:>5} us  p99 {:>6} us",
        report.requests_per_second(),
        report.latency_us(0.5),
        report.latency_us(0.99)
    )
}

/// `ours` against `baseline`: requests/s, p50 and p99 as ratios.
pub fn ratios(ours: &LoadReport, plain: &LoadReport) -> String {
    format!(
        "{:.2}x requests/s, p50 {:.2}x, p99 {:.2}x",
        ours.requests_per_second() / plain.requests_per_second(),
        ours.latency_us(0.5) as f64 / plain.latency_us(0.5) as f64,
        ours.latency_us(0.99) as f64 / plain.latency_us(0.99) as f64
    )
}

/// One load run as JSON, for `target/bench-results`.
pub fn summary(report: &LoadReport) -> serde_json::Value {
    serde_json::json!({
        "requests_per_second": report.requests_per_second(),
        "p50_us": report.latency_us(0.5),
        "p99_us": report.latency_us(0.99),
        "requests": report.requests,
    })
}

/// The median of per-round values.
pub fn median_of(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    match values.len() {
        0 => f64::NAN,
        // An even count has two middles: taking the upper one alone would flatter a ratio.
        len if len % 2 == 0 => (values[middle - 1] + values[middle]) / 2.0,
        _ => values[middle],
    }
}

/// The round with the median requests/s.
pub fn median(mut rounds: Vec<LoadReport>) -> LoadReport {
    rounds.sort_by(|a, b| a.requests_per_second().total_cmp(&b.requests_per_second()));
    rounds.swap_remove(rounds.len() / 2)
}

/// Two runtimes of two workers each, one for the servers and one for the load client, so
/// neither starves the other's scheduler.
pub fn server_and_client_runtimes() -> Result<(tokio::runtime::Runtime, tokio::runtime::Runtime)> {
    let build = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    };
    Ok((build()?, build()?))
}

/// Sends the gRPC call `path` with the framed message `body` on `connections` HTTP/2
/// connections (prior knowledge), `streams` calls in flight on each, for `duration`; each
/// call that ends `grpc-status: 0` in its trailers with a message counts.
pub async fn run_grpc_load(
    addr: SocketAddr,
    path: &str,
    body: Bytes,
    connections: usize,
    streams: usize,
    duration: Duration,
) -> Result<LoadReport> {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(connections * streams);
    for _ in 0..connections {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await?;
        tokio::spawn(connection);
        for _ in 0..streams {
            let (sender, path, body) = (sender.clone(), path.to_owned(), body.clone());
            tasks.push(tokio::spawn(async move {
                grpc_stream_loop(sender, &path, body, deadline).await
            }));
        }
    }
    let mut total = LoadReport {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        histogram: Histogram::new_with_bounds(1, 60_000_000, 3)?,
    };
    for task in tasks {
        let (requests, errors, histogram) = task.await.context("load task panicked")??;
        total.requests += requests;
        total.errors += errors;
        total.histogram.add(histogram)?;
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

async fn grpc_stream_loop(
    mut sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    path: &str,
    body: Bytes,
    deadline: Instant,
) -> Result<(u64, u64, Histogram<u64>)> {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut requests, mut errors) = (0, 0);
    while Instant::now() < deadline {
        let request = hyper::Request::post(format!("http://bench{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(body.clone()))?;
        let started = Instant::now();
        let response = sender.send_request(request).await?;
        let ok = response.status() == 200;
        let collected = response.into_body().collect().await?;
        let status_ok = collected
            .trailers()
            .and_then(|trailers| trailers.get("grpc-status"))
            .is_some_and(|status| status == "0");
        let message = collected.to_bytes();
        histogram.record((started.elapsed().as_micros() as u64).max(1))?;
        if ok && status_ok && !message.is_empty() {
            requests += 1;
        } else {
            errors += 1;
        }
    }
    Ok((requests, errors, histogram))
}

#[cfg(test)]
mod tests {
    use super::median_of;

    #[test]
    fn the_median_of_an_even_count_is_between_its_two_middles() {
        assert_eq!(median_of(vec![0.9, 0.7, 0.8]), 0.8);
        assert_eq!(median_of(vec![0.87, 0.85, 0.68, 0.77]), 0.81);
        assert!(median_of(Vec::new()).is_nan());
    }
}
