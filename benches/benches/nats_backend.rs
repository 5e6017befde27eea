//! The NATS JetStream backend against async-nats used directly, on the same nats-server (the
//! Debian package with JetStream, started here on a free port, its store on disk) in the same
//! run.
//!
//! Ours: a node with `[messaging] backend = "nats"` and a topic whose subscriber is a mailroom
//! guest (reused instances, 64 deliveries at once); `BENCH_PUBLISHERS` (default 64) publishers
//! publish `BENCH_MESSAGES` (default 100) messages of 128 bytes each through the node's broker
//! natively (the way a guest's `publish` goes once past the WIT call), each awaiting
//! JetStream's acknowledgement; the figure is messages per second until the guest acknowledged
//! every one. Theirs: the same publishers publish with async-nats to a stream of the same
//! settings, awaiting each acknowledgement, and one pull consumer (64 unacknowledged at most)
//! acknowledges each message as it comes. The two alternate for `BENCH_ROUNDS` (default 3)
//! rounds; the median of the per-round ratios counts. Aim: at least 0.8x.
//!
//! `cargo xtask bench -- --bench nats_backend`. `BENCH_SIDE=switchyard` (or `async-nats`)
//! runs that side's rounds only, for a profile of one side; it prints no ratio.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt as _;
use switchyard_benches::{NatsServer, RoundClock, env_or, median_of, timed_loop, wait_until};

/// Messages per second, publish to the last acknowledged delivery, the publishes' p50, and
/// this process's and nats-server's CPU per message over the same span.
struct Run {
    rate: f64,
    publish_p50_us: u64,
    cpu_us_each: f64,
    server_cpu_us_each: f64,
}

/// nats-server's CPU per message between `before` and now.
fn server_cpu_each(nats: &NatsServer, before: Option<Duration>, count: u64) -> f64 {
    match (before, nats.cpu_time()) {
        (Some(before), Some(after)) if count > 0 => {
            after.saturating_sub(before).as_secs_f64() * 1e6 / count as f64
        }
        _ => f64::NAN,
    }
}

async fn ours(
    nats: &NatsServer,
    dir: &std::path::Path,
    publishers: usize,
    each: usize,
) -> Result<Run> {
    let url = &nats.url;
    let guests = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/guests/wasm32-wasip2/release");
    anyhow::ensure!(
        guests.join("mailroom.wasm").is_file(),
        "guests are missing: run `cargo xtask bench`"
    );
    let path = dir.join("nats.toml");
    std::fs::write(
        &path,
        format!(
            "[node]\nname = \"bench\"\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
             data_dir = {:?}\n\n[messaging]\nbackend = \"nats\"\nservers = [\"{url}\"]\n\n\
             [[service]]\nname = \"sub\"\nversion = \"1.0.0\"\ncomponent = {:?}\n\
             max_instances = 256\nrequests_per_instance = 100000\nconfig = {{ name = \"sub\" }}\n\n\
             [[topic]]\nname = \"t1\"\nretain_mb = 1024\n\n[[topic.subscription]]\n\
             service = \"sub\"\nconcurrency = 64\n",
            dir.join("data").display().to_string(),
            guests.join("mailroom.wasm").display().to_string()
        ),
    )?;
    let node = switchyard::Node::start(&switchyard::Manifest::load(&path)?).await?;
    let publisher = Arc::new(switchyard::bench::NodePublisher::of(&node));
    // Warm-up: guest instances, the consumer's pull.
    for _ in 0..200 {
        publisher
            .publish("t1", vec![b'w'; 16])
            .await
            .map_err(anyhow::Error::msg)?;
    }
    wait_until("the warm-up was delivered", || {
        publisher.delivered("t1") >= 200
    })
    .await?;
    let before = publisher.delivered("t1");
    let server_before = nats.cpu_time();
    let clock = RoundClock::start();
    let publishes = {
        let publisher = publisher.clone();
        timed_loop("switchyard on NATS publish", each, publishers, move || {
            let publisher = publisher.clone();
            async move {
                publisher
                    .publish("t1", vec![b'm'; 128])
                    .await
                    .map(drop)
                    .map_err(anyhow::Error::msg)
            }
        })
        .await?
    };
    let expected = before + publishes.count;
    wait_until("the guest got every message", || {
        publisher.delivered("t1") >= expected
    })
    .await?;
    let round = clock.finish("switchyard", publishes.count, publishes.histogram.clone());
    node.shutdown().await;
    Ok(Run {
        rate: round.rate(),
        publish_p50_us: publishes.latency_us(0.5),
        cpu_us_each: round.cpu_us_each(),
        server_cpu_us_each: server_cpu_each(nats, server_before, round.count),
    })
}

async fn theirs(nats: &NatsServer, round: usize, publishers: usize, each: usize) -> Result<Run> {
    let consumer_name = format!("sub-{round}");
    let client = async_nats::connect(&nats.url).await?;
    let js = jetstream::new(client);
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: "direct".into(),
            subjects: vec!["direct.>".into()],
            max_bytes: 1 << 30,
            max_messages_per_subject: -1,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await?;
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            // A consumer per round (deleted after it) that takes this round's messages only,
            // as ours, a durable consumer that goes on, gets.
            durable_name: Some(consumer_name.clone()),
            deliver_policy: jetstream::consumer::DeliverPolicy::New,
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 64,
            ..Default::default()
        })
        .await?;
    let received = Arc::new(AtomicU64::new(0));
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(64)
        // As ours pulls. With async-nats' default pull settings one round in five stalled
        // about 35 s (why is not understood); with these none did.
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await?;
    let consuming = tokio::spawn({
        let received = received.clone();
        async move {
            while let Some(Ok(message)) = messages.next().await {
                tokio::spawn({
                    let received = received.clone();
                    async move {
                        if message.ack().await.is_ok() {
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        }
    });
    let server_before = nats.cpu_time();
    let clock = RoundClock::start();
    let publishes = {
        let js = js.clone();
        timed_loop(
            "async-nats JetStream publish",
            each,
            publishers,
            move || {
                let js = js.clone();
                async move {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("Nats-Msg-Id", format!("{:016x}", next_id()).as_str());
                    js.publish_with_headers("direct.n", headers, Bytes::from(vec![b'm'; 128]))
                        .await?
                        .await?;
                    Ok(())
                }
            },
        )
        .await?
    };
    let expected = publishes.count;
    wait_until("the consumer got every message", || {
        received.load(Ordering::Relaxed) >= expected
    })
    .await?;
    let round = clock.finish("async-nats", publishes.count, publishes.histogram.clone());
    consuming.abort();
    stream.delete_consumer(&consumer_name).await?;
    Ok(Run {
        rate: round.rate(),
        publish_p50_us: publishes.latency_us(0.5),
        cpu_us_each: round.cpu_us_each(),
        server_cpu_us_each: server_cpu_each(nats, server_before, round.count),
    })
}

/// A message id, unique within the duplicate window, as ours are.
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed) ^ 0x9e37_79b9_7f4a_7c15
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let publishers: usize = env_or("BENCH_PUBLISHERS", 64);
    let each: usize = env_or("BENCH_MESSAGES", 100);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let base = switchyard_benches::data_dir()?;
    let nats = NatsServer::start_jetstream(&base).await?;
    let dir = tempfile::tempdir_in(&base)?;
    println!(
        "NATS JetStream backend ({publishers} publishers x {each} messages of 128 B; messages/s \
         until the subscriber acknowledged every one)"
    );
    // The server's own speed drifts (its store grows, the disk is shared): the two alternate,
    // and the median of the per-round ratios counts.
    let side = std::env::var("BENCH_SIDE").unwrap_or_default();
    if !side.is_empty() {
        for round in 0..rounds {
            let run = match side.as_str() {
                "switchyard" => ours(&nats, dir.path(), publishers, each).await?,
                "async-nats" => theirs(&nats, round, publishers, each).await?,
                other => anyhow::bail!("BENCH_SIDE={other}: use switchyard or async-nats"),
            };
            println!(
                "  round {round}: {side} {:>8.0} msg/s (publish p50 {} us, cpu {:.1} us each, \
                 nats-server {:.1})",
                run.rate, run.publish_p50_us, run.cpu_us_each, run.server_cpu_us_each
            );
        }
        return Ok(());
    }
    let mut ratios = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let theirs = theirs(&nats, round, publishers, each).await?;
        let ours = ours(&nats, dir.path(), publishers, each).await?;
        let ratio = ours.rate / theirs.rate;
        println!(
            "  round {round}: switchyard (guest subscriber) {:>8.0} msg/s (publish p50 {} us, cpu \
             {:.1} us each, nats-server {:.1}), async-nats direct {:>8.0} msg/s (publish p50 {} \
             us, cpu {:.1} us each, nats-server {:.1}): {ratio:.2}x",
            ours.rate,
            ours.publish_p50_us,
            ours.cpu_us_each,
            ours.server_cpu_us_each,
            theirs.rate,
            theirs.publish_p50_us,
            theirs.cpu_us_each,
            theirs.server_cpu_us_each,
        );
        ratios.push(ratio);
    }
    println!(
        "  switchyard vs async-nats direct: {:.2}x, median of {rounds} rounds (aim >= 0.8x)",
        median_of(ratios)
    );
    Ok(())
}
