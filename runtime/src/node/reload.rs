//! Applying edits of a running node's manifest.
//!
//! The manifest's directory is watched (editors save by renaming a new file over the old, so
//! the file itself is not a stable thing to watch). After a change settles ([`SETTLE`]), the
//! manifest is read again: a manifest that does not parse is logged and ignored (the node
//! keeps serving what it has); a service or policy whose `component` changed (another path,
//! or the same path with new contents) is hot-swapped, exactly like `switchyard swap`; a
//! service whose limits, `config` or `env` changed gets a new generation with them (same
//! drain, probation and rollback); a policy whose `config` changed gets fresh instances with
//! the new config and the old ones' state; added, removed or reordered `[[bind]]` entries and
//! `[[policy]]` declarations take effect for the next call (bindings that stay keep their
//! instance and state); added services start, removed ones stop taking requests (in-flight
//! ones finish), changed routes apply to the next request, and peers learn the new set of
//! services; queues added to `[[queue]]` open, removed ones drain and close, and changed
//! queue settings apply to the next delivery. What is left (versions, addresses, limits above
//! what the node's instance pool was sized for) needs a restart, and the log says which.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::Watcher;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};

use super::Control;
use crate::manifest::Manifest;

/// How long the file must be quiet before it is read.
const SETTLE: Duration = Duration::from_millis(150);

/// What a reload did, for the log and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Services and policies swapped to their new component.
    pub swapped: Vec<String>,
    /// Other changes that took effect: services added or removed, routes, policy config,
    /// policy declarations, bindings, queues added, removed or reconfigured.
    pub applied: Vec<String>,
    /// Differences that only a restart applies.
    pub needs_restart: Vec<String>,
    /// Swaps the node refused (the old code keeps running).
    pub refused: Vec<String>,
}

/// Watches `manifest`'s file until `stop`; each settled change is applied through `control`.
pub(super) fn spawn(
    manifest: Manifest,
    control: Arc<Control>,
    mut stop: watch::Receiver<bool>,
    reports: Option<mpsc::UnboundedSender<ReloadReport>>,
) -> Result<tokio::task::JoinHandle<()>, notify::Error> {
    let (changed, mut changes) = mpsc::unbounded_channel();
    let file_name = manifest.path.file_name().map(ToOwned::to_owned);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Opening or reading the file is not a change (the reload itself reads it: counting
        // that would reload forever).
        if let Ok(event) = event
            && changes_contents(&event.kind)
            && event
                .paths
                .iter()
                .any(|path| path.file_name() == file_name.as_deref())
        {
            let _ = changed.send(());
        }
    })?;
    let dir = manifest
        .path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    Ok(tokio::spawn(async move {
        let _watcher = watcher;
        let mut current = manifest;
        let mut hashes = component_hashes(&current);
        loop {
            tokio::select! {
                event = changes.recv() => if event.is_none() { return },
                _ = stop.wait_for(|stop| *stop) => return,
            }
            // Let a burst of events (write, rename, chmod) settle into one reload.
            loop {
                tokio::select! {
                    more = changes.recv() => if more.is_none() { return },
                    _ = tokio::time::sleep(SETTLE) => break,
                }
            }
            let next = match Manifest::load(&current.path) {
                Ok(next) => next,
                Err(error) => {
                    tracing::warn!(manifest = %current.path.display(), %error, "manifest changed but does not load; keeping what runs");
                    continue;
                }
            };
            let next_hashes = component_hashes(&next);
            let report = apply(&current, &next, &hashes, &next_hashes, &control).await;
            current = next;
            hashes = next_hashes;
            if report == ReloadReport::default() {
                tracing::debug!(manifest = %current.path.display(), "manifest saved without changes");
            } else {
                tracing::info!(swapped = ?report.swapped, applied = ?report.applied, needs_restart = ?report.needs_restart, refused = ?report.refused, "manifest change applied");
            }
            if let Some(reports) = &reports {
                let _ = reports.send(report);
            }
        }
    }))
}

fn changes_contents(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    match kind {
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
    }
}

/// SHA-256 of every service's and policy's component file, by `service:` / `policy:` name.
fn component_hashes(manifest: &Manifest) -> HashMap<String, Option<String>> {
    let hash = |path: &PathBuf| {
        std::fs::read(path)
            .ok()
            .map(|bytes| format!("{:x}", Sha256::digest(bytes)))
    };
    let services = manifest
        .services
        .iter()
        .map(|s| (format!("service:{}", s.name), hash(&s.component)));
    let policies = manifest
        .policies
        .iter()
        .map(|p| (format!("policy:{}", p.name), hash(&p.component)));
    services.chain(policies).collect()
}

/// Applies the edit from `old` to `new`, one part of [`crate::manifest::plan`] at a time.
async fn apply(
    old: &Manifest,
    new: &Manifest,
    old_hashes: &HashMap<String, Option<String>>,
    new_hashes: &HashMap<String, Option<String>>,
    control: &Control,
) -> ReloadReport {
    let mut report = ReloadReport::default();
    let plan = crate::manifest::plan(old, new);
    let changed = |key: &str| old_hashes.get(key) != new_hashes.get(key);
    if plan.services {
        reroute(new, control, &mut report).await;
    }
    if plan.queues {
        match control.requeue(new).await {
            Ok(changes) => report.applied.extend(changes),
            Err(reason) => report.refused.push(format!("[[queue]] changes: {reason}")),
        }
    }
    update_services(old, new, &changed, control, &mut report).await;
    update_policies(old, new, &changed, control, &mut report).await;
    if plan.policies {
        rebind(old, new, control, &mut report).await;
    }
    if plan.balance {
        control.rebalance(&new.balance);
        report
            .applied
            .push("[balance]: calls from now on pick instances by the new settings".into());
    }
    report.needs_restart.extend(plan.needs_restart);
    report
}

/// The services step's first half: the set of services and their routes.
async fn reroute(new: &Manifest, control: &Control, report: &mut ReloadReport) {
    match control.reroute(new).await {
        Ok(replaced) => {
            report.applied.extend(
                (replaced
                    .added
                    .iter()
                    .map(|name| format!("service `{name}` added")))
                .chain(
                    replaced
                        .removed
                        .iter()
                        .map(|name| format!("service `{name}` removed")),
                )
                .chain(
                    replaced
                        .rerouted
                        .iter()
                        .map(|name| format!("service `{name}`: routes changed")),
                ),
            );
            report.needs_restart.extend(replaced.version_changed);
        }
        Err(reason) => report
            .refused
            .push(format!("[[service]] list or routes: {reason}")),
    }
}

/// The services step's second half: a service that stays gets its new component or settings
/// as a new generation.
async fn update_services(
    old: &Manifest,
    new: &Manifest,
    changed: &impl Fn(&str) -> bool,
    control: &Control,
    report: &mut ReloadReport,
) {
    for service in &new.services {
        let Some(before) = old.services.iter().find(|s| s.name == service.name) else {
            continue; // Added (or refused) just above.
        };
        if before.version != service.version {
            continue;
        }
        let component = if changed(&format!("service:{}", service.name)) {
            match std::fs::read(&service.component) {
                Ok(bytes) => Some(bytes),
                Err(error) => {
                    report.refused.push(format!(
                        "service `{}`: cannot read {}: {error}",
                        service.name,
                        service.component.display()
                    ));
                    continue;
                }
            }
        } else {
            None
        };
        let settings = super::slot_config(service);
        let settings = (super::slot_config(before) != settings).then_some(settings);
        let what = match (&component, &settings) {
            (None, None) => continue,
            (Some(_), None) => "",
            (None, Some(_)) => " (new settings)",
            (Some(_), Some(_)) => " (and new settings)",
        };
        let mut label = format!("service `{}`{what}", service.name);
        let replaces_upload = component.is_some();
        match control
            .update_service(&service.name, component, settings)
            .await
        {
            Ok(_) => {
                if replaces_upload {
                    note_replaced_upload(control, "service", &service.name, &mut label);
                }
                report.swapped.push(label);
            }
            Err(reason) => report.refused.push(format!("{label}: {reason}")),
        }
    }
}

/// The manifest's component of `name` replaced one the admin API had swapped in: said in
/// the report and the log, since the operator who swapped it may not be the one who edited.
fn note_replaced_upload(control: &Control, kind: &str, name: &str, label: &mut String) {
    if let Some(sha256) = control.replaces_admin_swap(&super::control::swap_key(kind, name)) {
        let short = &sha256[..sha256.len().min(12)];
        tracing::warn!(target: "switchyard::audit", action = "manifest replaces upload", kind, name, replaced = %sha256, "the manifest's component replaces one swapped in through the admin API");
        label.push_str(&format!(
            " (replaces sha256:{short}, swapped in through the admin API)"
        ));
    }
}

/// Policies whose component or config changed: swapped or reconfigured, state carried over.
async fn update_policies(
    old: &Manifest,
    new: &Manifest,
    changed: &impl Fn(&str) -> bool,
    control: &Control,
    report: &mut ReloadReport,
) {
    for policy in &new.policies {
        let Some(before) = old.policies.iter().find(|p| p.name == policy.name) else {
            continue; // Declared by the rebind below.
        };
        if changed(&format!("policy:{}", policy.name)) {
            let mut what = format!("policy `{}`", policy.name);
            match std::fs::read(&policy.component) {
                Ok(bytes) => match control.swap_policy(&policy.name, bytes).await {
                    Ok(_) => {
                        note_replaced_upload(control, "policy", &policy.name, &mut what);
                        report.swapped.push(what);
                    }
                    Err(reason) => report.refused.push(format!("{what}: {reason}")),
                },
                Err(error) => report.refused.push(format!(
                    "{what}: cannot read {}: {error}",
                    policy.component.display()
                )),
            }
        }
        if before.config != policy.config {
            match control
                .reconfigure_policy(&policy.name, &policy.config)
                .await
            {
                Ok(bindings) => report.applied.push(format!(
                    "policy `{}`: new config ({bindings} bindings, state carried over)",
                    policy.name
                )),
                Err(reason) => report
                    .refused
                    .push(format!("policy `{}` config: {reason}", policy.name)),
            }
        }
    }
}

/// Policies declared or removed and `[[bind]]` entries: the binding tables, rebuilt.
async fn rebind(old: &Manifest, new: &Manifest, control: &Control, report: &mut ReloadReport) {
    let names = |m: &Manifest| {
        m.policies
            .iter()
            .map(|p| p.name.clone())
            .collect::<Vec<_>>()
    };
    let (old_names, new_names) = (names(old), names(new));
    if old.bindings != new.bindings || old_names != new_names {
        match control.rebind(new).await {
            Ok(rebound) => {
                let added = new_names.iter().filter(|name| !old_names.contains(name));
                let removed = old_names.iter().filter(|name| !new_names.contains(name));
                report.applied.extend(
                    (added.map(|name| format!("policy `{name}` declared")))
                        .chain(removed.map(|name| format!("policy `{name}` removed")))
                        .chain(
                            rebound
                                .started
                                .iter()
                                .map(|b| format!("binding started: {b}")),
                        )
                        .chain(
                            rebound
                                .dropped
                                .iter()
                                .map(|b| format!("binding dropped: {b}")),
                        ),
                );
            }
            Err(reason) => report
                .refused
                .push(format!("[[bind]] / [[policy]] changes: {reason}")),
        }
    }
}
