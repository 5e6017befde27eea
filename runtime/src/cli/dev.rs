//! `switchyard dev [dir]`: the save → serving loop.
//!
//! Builds the project, starts a node from its manifest in this process, then watches the
//! project's sources: each save (after the editor's burst of events settles) rebuilds the
//! component and hot-swaps it through the node's admin API, exactly like `switchyard swap`,
//! so the swap drains in-flight requests and goes through probation. A build that fails is
//! printed and the version already serving keeps serving; the next save tries again.
//!
//! The manifest itself is not reloaded here (its directory is the project's, where every
//! source save would wake the node's manifest watcher too): edit it, then restart `dev`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use notify::Watcher;
use switchyard::{Manifest, Node};
use tokio::sync::mpsc;

use super::admin::{AdminApi, AdminArgs};
use super::guest::{Home, Project};

/// How long sources must be quiet before a rebuild: an editor's save is several events.
const SETTLE: Duration = Duration::from_millis(60);

pub(crate) fn dev(dir: &Path, manifest: Option<&Path>) -> Result<()> {
    let project = Project::open(dir)?;
    let home = Home::locate()?;
    let manifest_path = match manifest {
        Some(path) => path.to_path_buf(),
        None => project.dir.join("switchyard.toml"),
    };
    // Built first: a manifest names components that must exist when it loads.
    eprintln!("dev: building {} ({:?})", project.name, project.lang);
    project.build(&home)?;
    let loaded = Manifest::load(&manifest_path)?;
    let service = served_by(&loaded, &project, &manifest_path)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let node = Node::start(&loaded).await?;
        let api = AdminApi::find(
            Some(&manifest_path),
            &AdminArgs {
                admin: Some(node.admin_addr()),
                token_file: Some(node.admin_token_file().to_path_buf()),
                ca: None,
            },
        )?;
        let (events, mut changed) = mpsc::unbounded_channel();
        let sources = project.dir.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event
                    && !matches!(event.kind, notify::EventKind::Access(_))
                {
                    let _ = events.send(event.paths);
                }
            })
            .context("cannot watch the project's files")?;
        watcher
            .watch(&sources, notify::RecursiveMode::Recursive)
            .with_context(|| format!("cannot watch {}", sources.display()))?;
        eprintln!(
            "dev: serving {service} on http://{} (admin {}); watching {} — save to rebuild, \
             Ctrl-C to stop",
            node.http_addr(),
            node.admin_addr(),
            sources.display()
        );

        let stop = crate::wait_for_stop_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                result = &mut stop => {
                    result?;
                    break;
                }
                paths = changed.recv() => {
                    let Some(paths) = paths else { break };
                    if !paths.iter().any(|path| project.is_source(path)) {
                        continue;
                    }
                    // Let the burst of events of one save settle, then build once for all.
                    while let Ok(Some(_)) = tokio::time::timeout(SETTLE, changed.recv()).await {}
                    rebuild_and_swap(&project, &home, &api, &service).await;
                }
            }
        }
        drop(watcher);
        node.shutdown().await;
        Ok(())
    })
}

/// The manifest's service whose component is the project's build. Both files exist (the
/// project was built, and the manifest loaded only because its components exist), so their
/// canonical paths tell.
fn served_by(manifest: &Manifest, project: &Project, manifest_path: &Path) -> Result<String> {
    let built = project.component();
    let canonical = |path: &Path| path.canonicalize().ok();
    let wanted = canonical(&built);
    match manifest
        .services
        .iter()
        .find(|service| wanted.is_some() && canonical(&service.component) == wanted)
    {
        Some(service) => Ok(service.name.to_string()),
        None => bail!(
            "{}: no [[service]] has component = {:?}, which `switchyard build` makes for {}; \
             point a service's `component` at it",
            manifest_path.display(),
            built.display(),
            project.dir.display()
        ),
    }
}

async fn rebuild_and_swap(project: &Project, home: &Home, api: &AdminApi, service: &str) {
    let started = Instant::now();
    eprintln!("dev: change seen, rebuilding {}", project.name);
    let build = {
        let (project, home) = (project.clone(), home.clone());
        tokio::task::spawn_blocking(move || project.build(&home)).await
    };
    let component = match build {
        Ok(Ok(component)) => component,
        Ok(Err(error)) => {
            eprintln!("dev: build failed; the version already serving keeps serving\n{error:#}");
            return;
        }
        Err(error) => {
            eprintln!("dev: the build task failed: {error}");
            return;
        }
    };
    let bytes = match tokio::fs::read(&component).await {
        Ok(bytes) => bytes,
        Err(error) => {
            eprintln!("dev: cannot read {}: {error}", component.display());
            return;
        }
    };
    match api.post(&format!("/services/{service}"), bytes).await {
        Ok((200, _)) => eprintln!(
            "dev: {service} swapped to the new build, {} ms after the change settled",
            started.elapsed().as_millis()
        ),
        Ok((status, body)) => eprintln!(
            "dev: the node refused the new build ({status}); the version already serving keeps \
             serving\n{}",
            body.trim_end()
        ),
        Err(error) => eprintln!("dev: cannot reach the node's admin API: {error:#}"),
    }
}
