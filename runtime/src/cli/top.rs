//! `switchyard top`: the live page (`/live`) in a terminal, redrawn every interval.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use super::admin::{AdminApi, AdminArgs};

pub(crate) fn top(
    manifest: Option<PathBuf>,
    args: &AdminArgs,
    interval: Duration,
    once: bool,
) -> Result<()> {
    let api = AdminApi::find(manifest.as_deref(), args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Rates need two looks: the first one only starts the node's window.
        let mut view = api.get("/live").await?;
        if once {
            tokio::time::sleep(interval.min(Duration::from_secs(1))).await;
            view = api.get("/live").await?;
            print!("{}", frame(&view));
            return Ok(());
        }
        loop {
            // Clear the screen and go home, then draw.
            print!("\x1b[2J\x1b[H{}", frame(&view));
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
            view = api.get("/live").await?;
        }
    })
}

fn number(value: &Value, digits: usize) -> String {
    value
        .as_f64()
        .map_or_else(|| "-".to_owned(), |n| format!("{n:.digits$}"))
}

fn percent(value: &Value) -> String {
    value
        .as_f64()
        .map_or_else(|| "-".to_owned(), |share| format!("{:.1}%", share * 100.0))
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("?")
}

fn rows(view: &Value, key: &str) -> Vec<Value> {
    view[key].as_array().cloned().unwrap_or_default()
}

/// One screen of `view`.
fn frame(view: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "switchyard top · node {} · rates over {} s · {} peer(s)",
        text(&view["node"]),
        number(&view["window_seconds"], 1),
        view["peers"]
    );
    let _ = writeln!(
        out,
        "\n{:<24} {:>9} {:>9} {:>9} {:>7} {:>8} {:>9}",
        "SERVICE", "REQ/S", "P50 MS", "P99 MS", "ERRORS", "IN USE", "TOTAL"
    );
    let instances = rows(view, "instances");
    for service in rows(view, "services") {
        let name = text(&service["service"]);
        let in_use = instances
            .iter()
            .find(|i| i["service"].as_str() == Some(name))
            .map_or_else(
                || "-".to_owned(),
                |i| format!("{}/{}", i["in_use"], i["max"]),
            );
        let _ = writeln!(
            out,
            "{:<24} {:>9} {:>9} {:>9} {:>7} {:>8} {:>9}",
            name,
            number(&service["per_second"], 1),
            number(&service["p50_ms"], 2),
            number(&service["p99_ms"], 2),
            percent(&service["error_rate"]),
            in_use,
            service["total"]
        );
    }
    let calls = rows(view, "calls");
    if !calls.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<32} {:>9} {:>9} {:>9} {:>7} {:>9}  FROM NODES",
            "CALLER -> CALLEE", "CALLS/S", "P50 MS", "P99 MS", "ERRORS", "TOTAL"
        );
    }
    for call in calls {
        let _ = writeln!(
            out,
            "{:<32} {:>9} {:>9} {:>9} {:>7} {:>9}  {}",
            format!("{} -> {}", text(&call["caller"]), text(&call["callee"])),
            number(&call["per_second"], 1),
            number(&call["p50_ms"], 2),
            number(&call["p99_ms"], 2),
            percent(&call["error_rate"]),
            call["total"],
            rows(&call, "nodes")
                .iter()
                .map(text)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let policies = rows(view, "policies");
    if !policies.is_empty() {
        let _ = writeln!(out, "\n{:<24} {:<24} {:<12}", "POLICY", "AROUND", "STATE");
    }
    for policy in policies {
        let _ = writeln!(
            out,
            "{:<24} {:<24} {:<12}",
            text(&policy["policy"]),
            text(&policy["scope"]),
            text(&policy["state"])
        );
    }
    let (queues, subscriptions) = (rows(view, "queues"), rows(view, "subscriptions"));
    if !queues.is_empty() || !subscriptions.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<40} {:>7} {:>9} {:>6}",
            "QUEUE / SUBSCRIPTION", "LAG", "IN-FLIGHT", "DEAD"
        );
    }
    for queue in queues {
        let _ = writeln!(
            out,
            "{:<40} {:>7} {:>9} {:>6}",
            format!("queue {}", text(&queue["queue"])),
            queue["depth"],
            queue["in_flight"],
            queue["dead_lettered"]
        );
    }
    for subscription in subscriptions {
        let _ = writeln!(
            out,
            "{:<40} {:>7} {:>9} {:>6}",
            format!(
                "topic {} -> {}",
                text(&subscription["topic"]),
                text(&subscription["subscriber"])
            ),
            subscription["lag"],
            "-",
            "-"
        );
    }
    let swaps = rows(view, "swaps");
    if !swaps.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<24} {:>12} {:<12} {:>9}",
            "LAST SWAP", "GENERATION", "STATE", "TOOK MS"
        );
    }
    for swap in swaps {
        let _ = writeln!(
            out,
            "{:<24} {:>12} {:<12} {:>9}",
            text(&swap["service"]),
            format!("{} -> {}", swap["from_generation"], swap["to_generation"]),
            text(&swap["state"]),
            swap["swap_us"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |us| format!("{:.1}", us / 1000.0))
        );
    }
    out
}
