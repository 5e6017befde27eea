//! The transactional outbox's cost: a commit that writes one value and puts one message in
//! the outbox, against the same store's commit of the value alone, in the same run (issue 16
//! aim: at most 1.1x the latency, exactly one fsync per commit). Commits run one at a time,
//! each waiting for its fsync (what one guest's `state.commit` waits for); the relay runs
//! beside them, handing every message to a broker that takes it at once.
//!
//! A last row runs 16 committers at once (as 16 guest instances would): group commit shares
//! the fsyncs among them.
//!
//! Each row also counts the writes to the store's file per commit: a commit writes every page
//! it changed, and the outbox's rows share a page with what every commit writes anyway.
//!
//! `cargo xtask bench -- --bench state_outbox`. `BENCH_COMMITS` (default 2000) per round,
//! `BENCH_ROUNDS` (default 3) rounds of each kind; `BENCH_DIR` (default `target/bench-data`) must be on disk: a tmpfs makes every sync free.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, anyhow};
use switchyard::bench::StateProbe;
use switchyard_benches::{Timed, env_or, timed_loop};

/// A round, and the fsyncs and writes to the file it took.
struct Round {
    timed: Timed,
    fsyncs: u64,
    writes: u64,
}

/// `commits` commits on `probe`, one at a time, each of a 128-byte value (and a 128-byte
/// outbox message with `outbox`).
async fn round(
    probe: &Arc<StateProbe>,
    name: &'static str,
    commits: usize,
    outbox: bool,
) -> Result<Round> {
    round_of(probe, name, commits, 1, outbox).await
}

/// `committers` tasks at once, each making `commits` commits one after another.
async fn round_of(
    probe: &Arc<StateProbe>,
    name: &'static str,
    commits: usize,
    committers: usize,
    outbox: bool,
) -> Result<Round> {
    let (fsyncs, writes) = (probe.fsyncs(), probe.writes());
    let next = Arc::new(AtomicU64::new(0));
    let probe_in = probe.clone();
    let timed = timed_loop(name, commits, committers, move || {
        let (probe, next) = (probe_in.clone(), next.clone());
        async move {
            let key = format!("order/{}", next.fetch_add(1, Ordering::Relaxed) % 1000);
            probe
                .commit(key, vec![b'v'; 128], outbox.then_some(128))
                .await
                .map_err(|err| anyhow!(err))
        }
    })
    .await?;
    Ok(Round {
        timed,
        fsyncs: probe.fsyncs() - fsyncs,
        writes: probe.writes() - writes,
    })
}

fn line(round: &Round) -> String {
    let timed = &round.timed;
    format!(
        "  {:<34} {:>7.0} commits/s  p50 {:>5} us  p99 {:>5} us  cpu {:>5.1} us each  {:.2} fsyncs  {:.2} writes each",
        timed.name,
        timed.rate(),
        timed.latency_us(0.5),
        timed.latency_us(0.99),
        timed.cpu_us_each(),
        round.fsyncs as f64 / timed.count as f64,
        round.writes as f64 / timed.count as f64,
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let commits: usize = env_or("BENCH_COMMITS", 2000);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let base = switchyard_benches::data_dir()?;
    let dir = tempfile::tempdir_in(&base)?;
    let probe = Arc::new(
        StateProbe::open(dir.path(), true)
            .await
            .map_err(|err| anyhow!(err))?,
    );
    // The same commits into a store whose relay is stopped: what storing the message costs
    // by itself (its outbox only grows; the file is warmed alike).
    let still_dir = tempfile::tempdir_in(&base)?;
    let still = Arc::new(
        StateProbe::open(still_dir.path(), false)
            .await
            .map_err(|err| anyhow!(err))?,
    );
    round(&still, "warm-up", 200, true).await?;
    // Warm the store's file and cache, then alternate the two kinds so drift hits both alike.
    round(&probe, "warm-up", 200, true).await?;
    let (mut plain, mut outbox, mut stored) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        plain.push(round(&probe, "plain commit (1 value)", commits, false).await?);
        outbox.push(round(&probe, "outbox commit (1 value + 1 message)", commits, true).await?);
        stored.push(round(&still, "outbox commit, relay stopped", commits, true).await?);
    }
    println!(
        "state store commits, one at a time ({commits} per round, {rounds} rounds each, alternating)"
    );
    for round in plain.iter().chain(&outbox).chain(&stored) {
        println!("{}", line(round));
    }
    let median = |rounds: &[Round]| {
        let mut p50: Vec<u64> = rounds.iter().map(|r| r.timed.latency_us(0.5)).collect();
        p50.sort_unstable();
        p50.get(p50.len() / 2).copied().unwrap_or(0)
    };
    let (plain_p50, outbox_p50, stored_p50) = (median(&plain), median(&outbox), median(&stored));
    let fsyncs_each = outbox.iter().map(|r| r.fsyncs).sum::<u64>() as f64
        / outbox.iter().map(|r| r.timed.count).sum::<u64>().max(1) as f64;
    println!(
        "  outbox vs plain: p50 {outbox_p50} us vs {plain_p50} us = {:.2}x (aim <= 1.1x); \
         {fsyncs_each:.2} fsyncs per outbox commit (aim 1); {} messages relayed; with the \
         relay stopped {:.2}x",
        outbox_p50 as f64 / plain_p50.max(1) as f64,
        probe.relayed(),
        stored_p50 as f64 / plain_p50.max(1) as f64,
    );
    let together = round_of(
        &probe,
        "outbox commit, 16 committers at once",
        commits / 4,
        16,
        true,
    )
    .await?;
    println!("{}", line(&together));
    for probe in [probe, still] {
        if let Ok(probe) = Arc::try_unwrap(probe) {
            probe.close().await;
        }
    }
    Ok(())
}
