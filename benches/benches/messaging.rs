//! Messaging: the embedded broker's topics and request/reply against nats-server (the Debian
//! package, started here on free ports; async-nats as its client) in the same run and
//! harness, on one node and across two (two nodes of ours over QUIC against two clustered
//! nats-servers), and what durability costs: publishes acknowledged after `fdatasync` (group
//! commit) against the same broker on a log that never syncs, and against one writer's
//! append + `fdatasync` on the same disk.
//!
//! Pub/sub: `BENCH_PUBLISHERS` (default 256) concurrent publishers each publish
//! `BENCH_MESSAGES` (default 100) messages of 16 or 128 bytes, awaiting each publish (ours
//! returns once the message is on disk; NATS core's once it is buffered for the socket); the
//! figure is messages per second until every subscriber (1 or 4) has every message. Ours
//! delivers to native subscribers that acknowledge at once (no guest), as NATS's subscribers
//! are plain client tasks. Request/reply: one requester, one responder, p50 and p99.
//!
//! `cargo xtask bench -- --bench messaging`. `BENCH_DIR` (default `target/bench-data`) must be
//! on disk: a tmpfs makes every sync free. `BENCH_PARTS` (default all: `one-node`,
//! `request-reply`, `two-nodes`, `durable`, comma-separated) runs some parts only, for a
//! profile of one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use switchyard::bench::TopicProbe;
use switchyard_benches::{NatsServer, Timed, env_or, timed_loop, wait_until};

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Two servers in a cluster (each routes to the other), as NATS spans two machines.
async fn cluster() -> Result<(NatsServer, NatsServer)> {
    let (one, two) = (free_port()?, free_port()?);
    let route = |port: u16| format!("nats://127.0.0.1:{port}");
    let first = NatsServer::start_with(&[
        "--name",
        "one",
        "--cluster_name",
        "bench",
        "--cluster",
        &route(one),
        "--routes",
        &route(two),
    ])
    .await?;
    let second = NatsServer::start_with(&[
        "--name",
        "two",
        "--cluster_name",
        "bench",
        "--cluster",
        &route(two),
        "--routes",
        &route(one),
    ])
    .await?;
    // Until the route is up, what one server gets the other's subscribers do not.
    let (probe, watcher) = (
        async_nats::connect(&first.url).await?,
        async_nats::connect(&second.url).await?,
    );
    let mut seen = watcher.subscribe("bench.route").await?;
    watcher.flush().await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        probe
            .publish("bench.route", Bytes::from_static(b"?"))
            .await?;
        probe.flush().await?;
        use futures_util::StreamExt;
        if tokio::time::timeout(Duration::from_millis(200), seen.next())
            .await
            .is_ok()
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the two nats-servers never routed"
        );
    }
    Ok((first, second))
}

/// Messages per second until every subscriber has all of them, and the publishes' latencies.
struct PubSub {
    publishes: Timed,
    until_all_delivered: Duration,
}

impl PubSub {
    fn rate(&self) -> f64 {
        self.publishes.count as f64 / self.until_all_delivered.as_secs_f64()
    }
}

/// One pub/sub row: ours against `baseline`'s, and the ratio (with `aim`).
fn compared(
    size: usize,
    subscribers: usize,
    ours: &PubSub,
    baseline: &str,
    theirs: &PubSub,
    aim: &str,
) -> String {
    format!(
        "  {size:>3} B 1->{subscribers}: switchyard {:>8.0} msg/s (publish p50 {} us), \
         {baseline} {:>8.0} msg/s (publish p50 {} us): {:.2}x{aim}",
        ours.rate(),
        ours.publishes.latency_us(0.5),
        theirs.rate(),
        theirs.publishes.latency_us(0.5),
        ours.rate() / theirs.rate()
    )
}

async fn ours_pubsub(
    dir: &std::path::Path,
    size: usize,
    subscribers: usize,
    publishers: usize,
    each: usize,
    fsync: bool,
    name: &'static str,
) -> Result<PubSub> {
    let probe = Arc::new(
        TopicProbe::open(dir, subscribers, 64, fsync)
            .await
            .map_err(anyhow::Error::msg)?,
    );
    let started = Instant::now();
    let publishes = {
        let probe = probe.clone();
        timed_loop(name, each, publishers, move || {
            let probe = probe.clone();
            async move {
                probe
                    .publish(vec![b'm'; size])
                    .await
                    .map(drop)
                    .map_err(anyhow::Error::msg)
            }
        })
        .await?
    };
    let expected = publishes.count * subscribers as u64;
    wait_until("every subscription got every message", || {
        probe.delivered() >= expected
    })
    .await?;
    let until_all_delivered = started.elapsed();
    if let Ok(probe) = Arc::try_unwrap(probe) {
        probe.close().await;
    }
    Ok(PubSub {
        publishes,
        until_all_delivered,
    })
}

async fn nats_pubsub(
    url: &str,
    subscribers_url: &str,
    subject: &str,
    size: usize,
    subscribers: usize,
    publishers: usize,
    each: usize,
) -> Result<PubSub> {
    let received = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..subscribers {
        let client = async_nats::connect(subscribers_url).await?;
        let mut subscription = client.subscribe(subject.to_owned()).await?;
        client.flush().await?;
        let received = received.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            while subscription.next().await.is_some() {
                received.fetch_add(1, Ordering::Relaxed);
            }
        });
        clients.push(client);
    }
    let publisher = async_nats::connect(url).await?;
    let payload = Bytes::from(vec![b'm'; size]);
    let started = Instant::now();
    let publishes = {
        let (publisher, subject) = (publisher.clone(), subject.to_owned());
        timed_loop("nats-server core publish", each, publishers, move || {
            let (publisher, subject, payload) =
                (publisher.clone(), subject.clone(), payload.clone());
            async move { Ok(publisher.publish(subject, payload).await?) }
        })
        .await?
    };
    publisher.flush().await?;
    let expected = publishes.count * subscribers as u64;
    wait_until("every NATS subscriber got every message", || {
        received.load(Ordering::Relaxed) >= expected
    })
    .await?;
    Ok(PubSub {
        publishes,
        until_all_delivered: started.elapsed(),
    })
}

/// Pub/sub across two nodes: topics `t1` (one subscription) and `t4` (four) live on node a,
/// whose publishers publish natively through its broker (as a guest's publish goes after the
/// WIT call); the subscribing services are mailroom guests on node b (reused instances), so
/// every delivery crosses QUIC, runs a guest and comes back acknowledged. NATS: two clustered
/// servers, the publisher on one, the subscribers (plain client tasks) on the other.
async fn two_nodes(publishers: usize, each: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let guests = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/guests/wasm32-wasip2/release");
    anyhow::ensure!(
        guests.join("mailroom.wasm").is_file(),
        "guests are missing: run `cargo xtask bench`"
    );
    let manifest = |name: &str, text: &str| -> Result<switchyard::Manifest> {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text)?;
        Ok(switchyard::Manifest::load(&path)?)
    };
    let node = |name: &str, more: &str| {
        format!(
            "[node]\nname = \"{name}\"\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
             quic = \"127.0.0.1:0\"\ndata_dir = {:?}\n{more}\n",
            dir.path().join(name).display().to_string()
        )
    };
    let mut subscribers = String::new();
    for n in 1..=4 {
        subscribers.push_str(&format!(
            "[[service]]\nname = \"sub{n}\"\nversion = \"1.0.0\"\ncomponent = {:?}\n\
             max_instances = 256\nrequests_per_instance = 100000\nconfig = {{ name = \"sub{n}\" }}\n\n",
            guests.join("mailroom.wasm").display().to_string()
        ));
    }
    let b = switchyard::Node::start(&manifest("b", &format!("{}{subscribers}", node("b", "")))?)
        .await?;
    let b_quic = b.quic_addr().context("node b has no QUIC address")?;
    let subscription =
        |n: usize| format!("[[topic.subscription]]\nservice = \"sub{n}\"\nconcurrency = 64\n");
    let topics = format!(
        "[[topic]]\nname = \"t1\"\nretain_mb = 1024\n{}\n[[topic]]\nname = \"t4\"\nretain_mb = 1024\n{}",
        subscription(1),
        (1..=4).map(subscription).collect::<String>()
    );
    let a = switchyard::Node::start(&manifest(
        "a",
        &format!("{}{topics}", node("a", &format!("seeds = [\"{b_quic}\"]"))),
    )?)
    .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await; // discovery
    let publisher = Arc::new(switchyard::bench::NodePublisher::of(&a));
    let (nats_one, nats_two) = cluster().await?;
    println!("messaging, two nodes ({publishers} publishers x {each} messages):");
    for (topic, subscribers) in [("t1", 1), ("t4", 4)] {
        // Warm-up: guest instances on b, connections.
        let warm = publisher.delivered(topic);
        for _ in 0..200 {
            publisher
                .publish(topic, vec![b'w'; 16])
                .await
                .map_err(anyhow::Error::msg)?;
        }
        wait_until("the warm-up was delivered", || {
            publisher.delivered(topic) >= warm + 200 * subscribers as u64
        })
        .await?;
        let size = 128;
        let before = publisher.delivered(topic);
        let started = Instant::now();
        let publishes = {
            let publisher = publisher.clone();
            timed_loop(
                "switchyard publish across nodes",
                each,
                publishers,
                move || {
                    let publisher = publisher.clone();
                    async move {
                        publisher
                            .publish(topic, vec![b'm'; size])
                            .await
                            .map(drop)
                            .map_err(anyhow::Error::msg)
                    }
                },
            )
            .await?
        };
        let expected = before + publishes.count * subscribers as u64;
        wait_until("every subscriber on node b got every message", || {
            publisher.delivered(topic) >= expected
        })
        .await?;
        let ours = PubSub {
            publishes,
            until_all_delivered: started.elapsed(),
        };
        let theirs = nats_pubsub(
            &nats_one.url,
            &nats_two.url,
            &format!("across.{subscribers}"),
            size,
            subscribers,
            publishers,
            each,
        )
        .await?;
        println!(
            "{}",
            compared(
                size,
                subscribers,
                &ours,
                "nats-server cluster",
                &theirs,
                " (aim >= 0.5x)"
            )
        );
    }
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}

/// One writer appending a small record and `fdatasync`ing it, `count` times.
async fn one_fsync(dir: &std::path::Path, count: usize) -> Result<Timed> {
    let path = dir.join("floor.log");
    let file = Arc::new(std::sync::Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?,
    ));
    timed_loop("one writer, append + fdatasync", count, 1, move || {
        let file = file.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                use std::io::Write;
                let mut file = file
                    .lock()
                    .map_err(|_| anyhow::anyhow!("floor log lock poisoned"))?;
                file.write_all(&[b'r'; 48])?;
                file.sync_data()?;
                Ok::<_, anyhow::Error>(())
            })
            .await?
        }
    })
    .await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let publishers: usize = env_or("BENCH_PUBLISHERS", 256);
    let each: usize = env_or("BENCH_MESSAGES", 100);
    let requests: usize = env_or("BENCH_REQUESTS", 2000);
    let base = switchyard_benches::data_dir()?;
    let nats = NatsServer::start_with(&[]).await?;
    let parts = std::env::var("BENCH_PARTS").unwrap_or_default();
    let runs = |part: &str| parts.is_empty() || parts.split(',').any(|wanted| wanted == part);

    if runs("one-node") {
        one_node(&base, &nats, publishers, each).await?;
    }
    if runs("request-reply") {
        request_reply(&base, &nats, requests).await?;
    }
    if runs("two-nodes") {
        two_nodes(publishers, each).await?;
    }
    if runs("durable") {
        durable(&base, publishers, each).await?;
    }
    Ok(())
}

async fn one_node(
    base: &std::path::Path,
    nats: &NatsServer,
    publishers: usize,
    each: usize,
) -> Result<()> {
    println!(
        "messaging, one node ({publishers} publishers x {each} messages; messages/s until \
         every subscriber has every message)"
    );
    for size in [16, 128] {
        for subscribers in [1, 4] {
            let dir = tempfile::tempdir_in(base)?;
            let ours = ours_pubsub(
                dir.path(),
                size,
                subscribers,
                publishers,
                each,
                true,
                "switchyard topic publish (fsync)",
            )
            .await?;
            let theirs = nats_pubsub(
                &nats.url,
                &nats.url,
                &format!("bench.{size}.{subscribers}"),
                size,
                subscribers,
                publishers,
                each,
            )
            .await?;
            println!(
                "{}",
                compared(size, subscribers, &ours, "nats-server", &theirs, "")
            );
        }
    }

    Ok(())
}

/// Request/reply at one requester.
async fn request_reply(base: &std::path::Path, nats: &NatsServer, requests: usize) -> Result<()> {
    let dir = tempfile::tempdir_in(base)?;
    let probe = Arc::new(
        TopicProbe::open(dir.path(), 1, 64, true)
            .await
            .map_err(anyhow::Error::msg)?,
    );
    let ours = {
        let probe = probe.clone();
        timed_loop("switchyard request/reply", requests, 1, move || {
            let probe = probe.clone();
            async move {
                probe
                    .request(b"ping".to_vec())
                    .await
                    .map(drop)
                    .map_err(anyhow::Error::msg)
            }
        })
        .await?
    };
    if let Ok(probe) = Arc::try_unwrap(probe) {
        probe.close().await;
    }
    let responder = async_nats::connect(&nats.url).await?;
    let mut asked = responder.subscribe("ask").await?;
    responder.flush().await?;
    tokio::spawn({
        let responder = responder.clone();
        async move {
            use futures_util::StreamExt;
            while let Some(request) = asked.next().await {
                if let Some(reply) = request.reply {
                    let _ = responder.publish(reply, request.payload).await;
                }
            }
        }
    });
    let requester = async_nats::connect(&nats.url).await?;
    let theirs = timed_loop("nats-server request/reply", requests, 1, move || {
        let requester = requester.clone();
        async move {
            requester
                .request("ask", Bytes::from_static(b"ping"))
                .await
                .map(drop)
                .map_err(anyhow::Error::from)
        }
    })
    .await?;
    println!("request/reply, one requester:");
    println!("  {}", ours.line("requests"));
    println!("  {}", theirs.line("requests"));
    println!(
        "  switchyard p50 {:.2}x nats-server's (its request is delivered as it is written, stored all the same)",
        ours.latency_us(0.5) as f64 / theirs.latency_us(0.5) as f64
    );

    Ok(())
}

/// What durability costs: the same publishes with and without fsync, and one fsync.
async fn durable(base: &std::path::Path, publishers: usize, each: usize) -> Result<()> {
    let (synced_dir, unsynced_dir) = (tempfile::tempdir_in(base)?, tempfile::tempdir_in(base)?);
    let synced = ours_pubsub(
        synced_dir.path(),
        128,
        1,
        publishers,
        each,
        true,
        "switchyard publish, acked after fsync",
    )
    .await?;
    let unsynced = ours_pubsub(
        unsynced_dir.path(),
        128,
        1,
        publishers,
        each,
        false,
        "switchyard publish, no fsync",
    )
    .await?;
    let floor = one_fsync(synced_dir.path(), 500).await?;
    println!("durable publish ({publishers} concurrent publishers, 128 B):");
    for timed in [&synced.publishes, &unsynced.publishes, &floor] {
        println!("  {}", timed.line("publishes"));
    }
    println!(
        "  fsync vs no fsync: publishes/s {:.2}x; publish p50 vs one fsync: {:.2}x",
        synced.publishes.rate() / unsynced.publishes.rate(),
        synced.publishes.latency_us(0.5) as f64 / floor.latency_us(0.5) as f64
    );
    Ok(())
}
