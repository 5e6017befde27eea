//! `switchyard state export|import <service>`: a backup of one service's keys, through the
//! admin API of the node that runs it (the store is that node's; it stays open).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::admin::{AdminApi, AdminArgs};

/// Writes `service`'s keys (JSON lines) to `out`, or to stdout.
pub(crate) fn export(
    service: &str,
    out: Option<&Path>,
    manifest: Option<PathBuf>,
    args: &AdminArgs,
) -> Result<()> {
    let api = AdminApi::find(manifest.as_deref(), args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, body) = runtime.block_on(api.get_text(&format!("/state/{service}/export")))?;
    if status != 200 {
        bail!(
            "the node refused the export ({status}): {}",
            body.trim_end()
        );
    }
    match out {
        Some(path) => {
            // Written whole, then renamed: a cut-off export never replaces a good backup.
            let scratch = path.with_extension("partial");
            std::fs::write(&scratch, &body)
                .with_context(|| format!("cannot write {}", scratch.display()))?;
            std::fs::rename(&scratch, path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "exported {} keys of `{service}` to {}",
                body.lines().count().saturating_sub(1),
                path.display()
            );
        }
        None => print!("{body}"),
    }
    Ok(())
}

/// Makes the export in `file` the whole state of `service`.
pub(crate) fn import(
    service: &str,
    file: &Path,
    manifest: Option<PathBuf>,
    args: &AdminArgs,
) -> Result<()> {
    let api = AdminApi::find(manifest.as_deref(), args)?;
    let bytes = std::fs::read(file)
        .with_context(|| format!("cannot read the export {}", file.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, body) = runtime.block_on(api.post(&format!("/state/{service}/import"), bytes))?;
    if status != 200 {
        bail!(
            "the node refused the import of {} ({status}): {}",
            file.display(),
            body.trim_end()
        );
    }
    println!("{}", body.trim_end());
    Ok(())
}
