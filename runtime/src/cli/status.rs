//! `switchyard status`: a running node's services, queues, topics, state and peers, as tables.

use std::path::PathBuf;

use anyhow::Result;

use super::admin::{AdminApi, AdminArgs};

pub(crate) fn status(manifest: Option<PathBuf>, args: &AdminArgs) -> Result<()> {
    let api = AdminApi::find(manifest.as_deref(), args)?;
    let admin = api.address();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (services, registry, queues, topics, state) = runtime.block_on(async {
        let services = api.get("/services").await?;
        let registry = api.get("/registry").await?;
        // A node from before queues (or topics) has no /queues (/topics): show the rest.
        let queues = api.get("/queues").await.unwrap_or_default();
        let topics = api.get("/topics").await.unwrap_or_default();
        let state = api.get("/state").await.unwrap_or_default();
        anyhow::Ok((services, registry, queues, topics, state))
    })?;
    println!(
        "node {} (admin {admin})",
        registry["node"].as_str().unwrap_or("?")
    );
    println!(
        "{:<20} {:<10} {:>9} {:>9} {:>7} {:>8}",
        "SERVICE", "VERSION", "IN-FLIGHT", "SERVED", "ERRORS", "REJECTED"
    );
    for service in services.as_array().into_iter().flatten() {
        println!(
            "{:<20} {:<10} {:>9} {:>9} {:>7} {:>8}",
            service["name"].as_str().unwrap_or("?"),
            service["version"].as_str().unwrap_or("?"),
            service["in_flight"].to_string(),
            service["served"].to_string(),
            service["errors"].to_string(),
            service["rejected"].to_string()
        );
    }
    let queues = queues.as_array().cloned().unwrap_or_default();
    if !queues.is_empty() {
        println!(
            "{:<20} {:<20} {:>7} {:>9} {:>9} {:>11} {:>6} {:>6}",
            "QUEUE",
            "SUBSCRIBER",
            "DEPTH",
            "IN-FLIGHT",
            "DELIVERED",
            "REDELIVERED",
            "DEAD",
            "LOOPS"
        );
    }
    for queue in &queues {
        println!(
            "{:<20} {:<20} {:>7} {:>9} {:>9} {:>11} {:>6} {:>6}",
            queue["name"].as_str().unwrap_or("?"),
            queue["subscriber"].as_str().unwrap_or("?"),
            queue["depth"].to_string(),
            queue["in_flight"].to_string(),
            queue["delivered"].to_string(),
            queue["redelivered"].to_string(),
            queue["dead_letters_total"].to_string(),
            queue["loops_stopped"].to_string()
        );
    }
    let topics = topics.as_array().cloned().unwrap_or_default();
    if !topics.is_empty() {
        println!(
            "{:<20} {:<20} {:>9} {:>7} {:>9} {:>9} {:>11} {:>6} {:>7}",
            "TOPIC",
            "SUBSCRIBER",
            "OFFSET",
            "LAG",
            "IN-FLIGHT",
            "DELIVERED",
            "REDELIVERED",
            "DEAD",
            "EXPIRED"
        );
    }
    for topic in &topics {
        let first = topic["first_offset"]
            .as_u64()
            .map_or_else(|| "-".to_owned(), |first| first.to_string());
        println!(
            "{:<20} {:<20} {:>9} {:>7} (offsets {first}..{}, {} messages, {} bytes kept)",
            topic["name"].as_str().unwrap_or("?"),
            "(topic)",
            topic["next_offset"].to_string(),
            "",
            topic["next_offset"],
            topic["messages"],
            topic["bytes"],
        );
        for sub in topic["subscriptions"].as_array().into_iter().flatten() {
            println!(
                "{:<20} {:<20} {:>9} {:>7} {:>9} {:>9} {:>11} {:>6} {:>7}",
                "",
                sub["service"].as_str().unwrap_or("?"),
                sub["cursor"].to_string(),
                sub["lag"].to_string(),
                sub["in_flight"].to_string(),
                sub["delivered"].to_string(),
                sub["redelivered"].to_string(),
                sub["dead_lettered"].to_string(),
                sub["expired"].to_string()
            );
        }
    }
    if !state.is_null() {
        let outbox = &state["outbox"];
        println!(
            "state: {} bytes on disk; outbox {} pending (lag {} ms), {} relayed, {} failed sends{}",
            state["file_bytes"],
            outbox["pending"],
            outbox["lag_ms"],
            outbox["relayed"],
            outbox["failed"],
            outbox["last_error"]
                .as_str()
                .map(|why| format!("; last: {why}"))
                .unwrap_or_default()
        );
        let services = state["services"].as_array().cloned().unwrap_or_default();
        if !services.is_empty() {
            println!(
                "{:<20} {:>9} {:>12} {:>12}",
                "STATE OF", "KEYS", "BYTES", "LIMIT"
            );
        }
        for service in services {
            println!(
                "{:<20} {:>9} {:>12} {:>12}",
                service["service"].as_str().unwrap_or("?"),
                service["keys"].to_string(),
                service["bytes"].to_string(),
                service["max_bytes"]
                    .as_u64()
                    .map_or("-".to_owned(), |max| max.to_string())
            );
        }
    }
    let peers = registry["peers"].as_array().cloned().unwrap_or_default();
    println!("peers: {}", peers.len());
    let names = |list: &serde_json::Value| {
        list.as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    for peer in peers {
        let queues = names(&peer["queues"]);
        println!(
            "  {} {} {}{}",
            peer["node"].as_str().unwrap_or("?"),
            peer["address"].as_str().unwrap_or("?"),
            names(&peer["services"]),
            if queues.is_empty() {
                String::new()
            } else {
                format!(" (queues and topics: {queues})")
            }
        );
    }
    Ok(())
}
