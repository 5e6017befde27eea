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

/// Calls or sends timed one by one: how many, over how long, and each one's latency.
pub struct Timed {
    pub name: &'static str,
    pub count: u64,
    pub elapsed: Duration,
    pub histogram: Histogram<u64>,
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

    /// One aligned report line, `unit` naming what was counted (`calls`, `sends`).
    pub fn line(&self, unit: &str) -> String {
        format!(
            "{:<42} {:>8.0} {unit}/s  p50 {:>6} us  p99 {:>6} us",
            self.name,
            self.rate(),
            self.latency_us(0.5),
            self.latency_us(0.99)
        )
    }
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
    let started = Instant::now();
    let mut running = Vec::new();
    for _ in 0..tasks {
        let make = make.clone();
        running.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            for _ in 0..each {
                let one = Instant::now();
                make().await?;
                histogram.record((one.elapsed().as_micros() as u64).max(1))?;
            }
            Ok::<_, anyhow::Error>(histogram)
        }));
    }
    let mut histogram = Histogram::new_with_bounds(1, 60_000_000, 3)?;
    for task in running {
        histogram.add(task.await??)?;
    }
    Ok(Timed {
        name,
        count: (each * tasks) as u64,
        elapsed: started.elapsed(),
        histogram,
    })
}
