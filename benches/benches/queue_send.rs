//! Durable queue sends: the embedded broker (checksummed record, group-committed `fdatasync`,
//! delivery to a subscriber that acknowledges at once) against two baselines in the same run
//! on the same disk: a naive log that appends and `fdatasync`s each message under a lock (what
//! a queue without group commit does), and the device's floor, one writer's append +
//! `fdatasync` latency.
//!
//! `cargo xtask bench -- --bench queue_send`. Knobs: `BENCH_SENDERS` (default 16),
//! `BENCH_SENDS` per sender (default 300), `BENCH_DIR` (default `target/bench-data`, on disk:
//! a tmpfs would make every sync free).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use switchyard::bench::QueueProbe;
use switchyard_benches::{env_or, timed_loop};

const BODY: &[u8] = &[b'm'; 256];

/// A log that appends one record and syncs it per send, under one lock.
fn naive_log(path: &std::path::Path) -> Result<Arc<Mutex<std::fs::File>>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    Ok(Arc::new(Mutex::new(file)))
}

fn append_and_sync(file: &Mutex<std::fs::File>) -> Result<()> {
    let mut file = file
        .lock()
        .map_err(|_| anyhow::anyhow!("log lock poisoned"))?;
    let mut record = Vec::with_capacity(8 + BODY.len());
    record.extend_from_slice(&(BODY.len() as u32).to_le_bytes());
    record.extend_from_slice(&0u32.to_le_bytes());
    record.extend_from_slice(BODY);
    file.write_all(&record)?;
    file.sync_data()?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let senders: usize = env_or("BENCH_SENDERS", 16);
    let sends: usize = env_or("BENCH_SENDS", 300);
    let base = switchyard_benches::data_dir()?;
    let dir = tempfile::tempdir_in(&base)?;

    let probe = Arc::new(
        QueueProbe::open(dir.path(), 4)
            .await
            .map_err(anyhow::Error::msg)?,
    );
    let ours = {
        let probe = probe.clone();
        timed_loop("switchyard queue send", sends, senders, move || {
            let probe = probe.clone();
            async move { probe.send(BODY.to_vec()).await.map_err(anyhow::Error::msg) }
        })
        .await?
    };
    let total = ours.count;
    let drain_started = Instant::now();
    while probe.delivered() < total {
        anyhow::ensure!(
            drain_started.elapsed() < Duration::from_secs(60),
            "only {} of {total} delivered",
            probe.delivered()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let delivered_after = ours.elapsed + drain_started.elapsed();
    if let Ok(probe) = Arc::try_unwrap(probe) {
        probe.close().await;
    }

    let naive = {
        let file = naive_log(&dir.path().join("naive.log"))?;
        timed_loop("naive log (fsync per send)", sends, senders, move || {
            let file = file.clone();
            async move { tokio::task::spawn_blocking(move || append_and_sync(&file)).await? }
        })
        .await?
    };
    let floor = {
        let file = naive_log(&dir.path().join("floor.log"))?;
        timed_loop("one writer, append + fsync", sends, 1, move || {
            let file = file.clone();
            async move { tokio::task::spawn_blocking(move || append_and_sync(&file)).await? }
        })
        .await?
    };

    println!(
        "queue_send ({senders} concurrent senders x {sends} sends of {} bytes)",
        BODY.len()
    );
    for outcome in [&ours, &naive, &floor] {
        println!("  {}", outcome.line("sends"));
    }
    println!(
        "  all {total} delivered (acknowledged) {:.0} ms after the first send",
        delivered_after.as_secs_f64() * 1000.0
    );
    println!(
        "  switchyard vs naive log: sends/s {:.2}x, p50 {:.2}x; switchyard p50 vs one fsync: {:.2}x",
        ours.rate() / naive.rate(),
        ours.latency_us(0.5) as f64 / naive.latency_us(0.5) as f64,
        ours.latency_us(0.5) as f64 / floor.latency_us(0.5) as f64
    );
    Ok(())
}
