//! Unary gRPC through a guest (`shop.Orders/Place` of examples/grpc, served by the
//! grpc-orders guest on a `grpc` route) against a plain tonic server answering the same
//! method with the same messages, same client (HTTP/2 with prior knowledge), same
//! concurrency, same run. The guest runs with a fresh instance per call (the default) and with
//! instance reuse (`requests_per_instance`). Aim: at least 0.5x tonic's calls/s, p99 at most 2x.
//!
//! `cargo xtask bench` (or `cargo bench -p switchyard-benches --bench grpc`).
//! Knobs: `BENCH_SECONDS` per round (default 5), `BENCH_CONNECTIONS` (default 4),
//! `BENCH_STREAMS` per connection (default 8), `BENCH_ROUNDS` (default 3; the targets
//! alternate each round, the median round counts).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use switchyard_benches::{
    LoadReport, env_or, line, median, median_of, ratios, run_grpc_load, server_and_client_runtimes,
    summary,
};

/// orders.proto's messages, as prost-build would write them.
mod shop {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Item {
        #[prost(string, tag = "1")]
        pub(crate) sku: String,
        #[prost(uint32, tag = "2")]
        pub(crate) quantity: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Order {
        #[prost(string, tag = "1")]
        pub(crate) customer: String,
        #[prost(message, repeated, tag = "2")]
        pub(crate) items: Vec<Item>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Placed {
        #[prost(string, tag = "1")]
        pub(crate) id: String,
        #[prost(uint32, tag = "2")]
        pub(crate) total_items: u32,
        #[prost(string, tag = "3")]
        pub(crate) note: String,
    }
}

/// The tonic side: `Place` as tonic's generated server code runs it (tonic's `Grpc` with
/// the prost codec), doing what the guest does.
#[derive(Clone, Copy)]
struct Place;

impl tonic::server::UnaryService<shop::Order> for Place {
    type Response = shop::Placed;
    type Future = std::future::Ready<Result<tonic::Response<shop::Placed>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<shop::Order>) -> Self::Future {
        let note = request
            .metadata()
            .get("x-order-note")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let order = request.into_inner();
        std::future::ready(if order.items.is_empty() {
            Err(tonic::Status::invalid_argument(
                "an order needs at least one item",
            ))
        } else {
            Ok(tonic::Response::new(shop::Placed {
                id: format!("{}-{}", order.customer, order.items.len()),
                total_items: order.items.iter().map(|item| item.quantity).sum(),
                note,
            }))
        })
    }
}

/// A tonic server on a free port, served over HTTP/2 by hyper as tonic's transport does.
async fn start_tonic() -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request| async move {
                    let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                        shop::Placed,
                        shop::Order,
                    >::default());
                    Ok::<_, Infallible>(grpc.unary(Place, request).await)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn framed(message: &impl prost::Message) -> Bytes {
    let mut framed = vec![0];
    framed.extend_from_slice(&(message.encoded_len() as u32).to_be_bytes());
    message.encode(&mut framed).ok();
    Bytes::from(framed)
}

fn main() -> Result<()> {
    let seconds: u64 = env_or("BENCH_SECONDS", 5);
    let connections: usize = env_or("BENCH_CONNECTIONS", 4);
    let streams: usize = env_or("BENCH_STREAMS", 8);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let duration = Duration::from_secs(seconds);
    let (servers, client) = server_and_client_runtimes()?;

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let component = root.join("target/guests/wasm32-wasip2/release/grpc_orders.wasm");
    if !component.is_file() {
        bail!(
            "{} is missing: run `cargo xtask build-guests`",
            component.display()
        );
    }
    let dir = tempfile::tempdir()?;
    let manifest_path = dir.path().join("switchyard.toml");
    let routes = "routes = [\"grpc /shop.Orders/Place\"]\nmax_instances = 1024\n";
    std::fs::write(
        &manifest_path,
        format!(
            "[node]\nname = \"bench\"\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
             data_dir = \"data\"\nmax_concurrent_streams = 1024\n[telemetry]\nmetrics = true\n\n\
             [[service]]\nname = \"orders\"\nversion = \"1.0.0\"\ncomponent = {c:?}\n{routes}",
            c = component.display().to_string()
        ),
    )?;
    let manifest =
        switchyard::Manifest::load(&manifest_path).map_err(|error| anyhow::anyhow!("{error}"))?;
    let (node, tonic_addr) = servers.block_on(async {
        let node = switchyard::Node::start(&manifest)
            .await
            .map_err(|error| anyhow::anyhow!("{error}"))?;
        Ok::<_, anyhow::Error>((node, start_tonic().await?))
    })?;
    let reuse_dir = tempfile::tempdir()?;
    let reuse_path = reuse_dir.path().join("switchyard.toml");
    std::fs::write(
        &reuse_path,
        std::fs::read_to_string(&manifest_path)?.replace(
            "max_instances = 1024\n",
            "max_instances = 1024\nrequests_per_instance = 1000\n",
        ),
    )?;
    let reuse_manifest =
        switchyard::Manifest::load(&reuse_path).map_err(|error| anyhow::anyhow!("{error}"))?;
    let reuse_node = servers
        .block_on(switchyard::Node::start(&reuse_manifest))
        .map_err(|error| anyhow::anyhow!("{error}"))?;

    let order = shop::Order {
        customer: "ada".into(),
        items: vec![
            shop::Item {
                sku: "tea".into(),
                quantity: 2,
            },
            shop::Item {
                sku: "cup".into(),
                quantity: 1,
            },
        ],
    };
    let body = framed(&order);
    let path = "/shop.Orders/Place";
    let targets = [
        ("tonic", tonic_addr),
        ("guest", node.http_addr()),
        ("guest-reuse", reuse_node.http_addr()),
    ];
    for (name, addr) in targets {
        let warm = client.block_on(run_grpc_load(
            addr,
            path,
            body.clone(),
            connections,
            streams,
            Duration::from_secs(1),
        ))?;
        if warm.requests == 0 || warm.errors > 0 {
            bail!(
                "{name} answered {} calls with {} errors while warming up",
                warm.requests,
                warm.errors
            );
        }
    }
    let mut reports: Vec<Vec<LoadReport>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        for (index, (name, addr)) in targets.iter().enumerate() {
            let report = client
                .block_on(run_grpc_load(
                    *addr,
                    path,
                    body.clone(),
                    connections,
                    streams,
                    duration,
                ))
                .with_context(|| format!("round {round}: {name}"))?;
            println!(
                "round {round} {name:<12} {}  errors {}",
                line(&report),
                report.errors
            );
            reports[index].push(report);
        }
    }
    let per_round = |index: usize| -> Vec<f64> {
        reports[index]
            .iter()
            .zip(&reports[0])
            .map(|(ours, base)| ours.requests_per_second() / base.requests_per_second())
            .collect()
    };
    let (fresh_ratio, reuse_ratio) = (median_of(per_round(1)), median_of(per_round(2)));
    let mut medians: Vec<LoadReport> = reports.into_iter().map(median).collect();
    let reuse = medians.pop().context("three targets")?;
    let guest = medians.pop().context("three targets")?;
    let tonic = medians.pop().context("three targets")?;
    println!(
        "\nunary gRPC, {connections} connections x {streams} streams, {seconds} s x {rounds} rounds"
    );
    println!("tonic              {}", line(&tonic));
    println!("guest (fresh)      {}", line(&guest));
    println!("guest (reuse)      {}", line(&reuse));
    println!(
        "guest (fresh) vs tonic: {} (median of per-round ratios {fresh_ratio:.2}x)",
        ratios(&guest, &tonic)
    );
    println!(
        "guest (reuse) vs tonic: {} (median of per-round ratios {reuse_ratio:.2}x)",
        ratios(&reuse, &tonic)
    );
    println!("aim: at least 0.5x tonic's calls/s, p99 at most 2x");
    let results = root.join("target/bench-results");
    std::fs::create_dir_all(&results)?;
    std::fs::write(
        results.join("grpc.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "tonic": summary(&tonic),
            "guest": summary(&guest),
            "guest_reuse": summary(&reuse),
            "guest_over_tonic_median_round_ratio": fresh_ratio,
            "guest_reuse_over_tonic_median_round_ratio": reuse_ratio,
        }))?,
    )?;
    servers.block_on(async {
        node.shutdown().await;
        reuse_node.shutdown().await;
    });
    Ok(())
}
