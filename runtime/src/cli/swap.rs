//! `switchyard swap` and `switchyard redrive`: changes to a running node, through its admin API.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::SwapKind;
use super::admin::{AdminApi, AdminArgs};

pub(crate) fn swap(
    kind: SwapKind,
    name: &str,
    component: &std::path::Path,
    manifest: Option<PathBuf>,
    args: &AdminArgs,
    wait: bool,
) -> Result<()> {
    let api = AdminApi::find(manifest.as_deref(), args)?;
    let bytes = std::fs::read(component)
        .with_context(|| format!("cannot read the new component {}", component.display()))?;
    let path = match kind {
        SwapKind::Service => format!("/services/{name}"),
        SwapKind::Policy => format!("/policies/{name}"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, body) = runtime.block_on(api.post(&path, bytes))?;
    if status != 200 {
        anyhow::bail!("the node refused the swap ({status}): {}", body.trim_end());
    }
    println!("{body}");
    if wait {
        let verdict = runtime.block_on(follow_probation(&api, kind, name))?;
        println!("{verdict}");
    }
    Ok(())
}

pub(crate) fn redrive(queue: &str, manifest: Option<PathBuf>, args: &AdminArgs) -> Result<()> {
    let api = AdminApi::find(manifest.as_deref(), args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let path = format!("/queues/{queue}/redrive");
    let (status, body) = runtime.block_on(api.post(&path, Vec::new()))?;
    if status != 200 {
        anyhow::bail!(
            "the node refused the redrive ({status}): {}",
            body.trim_end()
        );
    }
    println!("{body}");
    Ok(())
}

/// `switchyard replay <topic> --subscriber <service> --from <start>`: rewinds (or moves
/// forward) a topic's subscription; prints where it starts.
pub(crate) fn replay(
    topic: &str,
    subscriber: &str,
    from: &str,
    manifest: Option<PathBuf>,
    args: &AdminArgs,
) -> Result<()> {
    if switchyard::manifest::StartAt::parse(from).is_none() {
        anyhow::bail!(
            "--from {from:?} is not a place in a topic; use `beginning`, `latest`, an offset \
             (e.g. 42) or an RFC 3339 time (e.g. 2026-11-26T08:00:00Z)"
        );
    }
    let api = AdminApi::find(manifest.as_deref(), args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("subscriber", subscriber)
        .append_pair("from", from)
        .finish();
    let path = format!("/topics/{topic}/replay?{query}");
    let (status, body) = runtime.block_on(api.post(&path, Vec::new()))?;
    if status != 200 {
        anyhow::bail!(
            "the node refused the replay ({status}): {}",
            body.trim_end()
        );
    }
    println!("{body}");
    Ok(())
}

/// How long `swap --wait` follows a swap: the node's probation (3 s) and some slack.
const PROBATION_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Polls the admin API until the last swap of `name` serves (`Ok`, with what the node says)
/// or was rolled back (`Err` with the node's reason). A policy counts as serving once every
/// binding of it does.
async fn follow_probation(api: &AdminApi, kind: SwapKind, name: &str) -> Result<String> {
    let started = std::time::Instant::now();
    loop {
        let swaps: Vec<serde_json::Value> = match kind {
            SwapKind::Service => api
                .get("/services")
                .await?
                .as_array()
                .into_iter()
                .flatten()
                .filter(|service| service["name"] == name)
                .map(|service| service["last_swap"].clone())
                .collect(),
            SwapKind::Policy => api
                .get("/policies")
                .await?
                .as_array()
                .into_iter()
                .flatten()
                .filter(|binding| binding["policy"] == name)
                .map(|binding| binding["last_swap"].clone())
                .collect(),
        };
        if swaps.is_empty() {
            anyhow::bail!("the node no longer lists `{name}`; it may have been removed");
        }
        if let Some(rolled_back) = swaps.iter().find(|swap| swap["state"] == "rolled-back") {
            anyhow::bail!(
                "the node rolled `{name}` back to generation {}: {}",
                rolled_back["from_generation"],
                rolled_back["reason"].as_str().unwrap_or("no reason given")
            );
        }
        if swaps.iter().all(|swap| swap["state"] == "serving") {
            return Ok(format!(
                "`{name}` generation {} passed its probation and serves",
                swaps[0]["to_generation"]
            ));
        }
        if started.elapsed() > PROBATION_WAIT {
            anyhow::bail!(
                "`{name}` is still on probation after {PROBATION_WAIT:?}; check `GET {}` on \
                 {}",
                match kind {
                    SwapKind::Service => "/services",
                    SwapKind::Policy => "/policies",
                },
                api.address()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
