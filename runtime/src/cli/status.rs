//! `switchyard status`: a running node's services, queues and peers, as tables.

use std::path::PathBuf;

use anyhow::Result;

use super::admin::{AdminApi, AdminArgs};

pub(crate) fn status(manifest: Option<PathBuf>, args: &AdminArgs) -> Result<()> {
    let api = AdminApi::find(manifest.as_deref(), args)?;
    let admin = api.address();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (services, registry, queues) = runtime.block_on(async {
        let services = api.get("/services").await?;
        let registry = api.get("/registry").await?;
        // A node from before queues has no /queues: show the rest.
        let queues = api.get("/queues").await.unwrap_or_default();
        anyhow::Ok((services, registry, queues))
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
            service["in_flight"],
            service["served"],
            service["errors"],
            service["rejected"]
        );
    }
    let queues = queues.as_array().cloned().unwrap_or_default();
    if !queues.is_empty() {
        println!(
            "{:<20} {:<20} {:>7} {:>9} {:>9} {:>11} {:>6}",
            "QUEUE", "SUBSCRIBER", "DEPTH", "IN-FLIGHT", "DELIVERED", "REDELIVERED", "DEAD"
        );
    }
    for queue in &queues {
        println!(
            "{:<20} {:<20} {:>7} {:>9} {:>9} {:>11} {:>6}",
            queue["name"].as_str().unwrap_or("?"),
            queue["subscriber"].as_str().unwrap_or("?"),
            queue["depth"],
            queue["in_flight"],
            queue["delivered"],
            queue["redelivered"],
            queue["dead_letters_total"]
        );
    }
    let peers = registry["peers"].as_array().cloned().unwrap_or_default();
    println!("peers: {}", peers.len());
    for peer in peers {
        println!(
            "  {} {} {}",
            peer["node"].as_str().unwrap_or("?"),
            peer["address"].as_str().unwrap_or("?"),
            peer["services"]
                .as_array()
                .map(|s| s
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(" "))
                .unwrap_or_default()
        );
    }
    Ok(())
}
