//! Remote retention: the local calendar rules ([`crate::backup::retention::plan`]) applied to the backups on a remote; the newest complete backup of each type is never deleted.
//!
//! A remote backup is deleted manifest first (so it is incomplete, and never
//! used, from the first request on), then its index, then its files. An
//! incomplete remote backup (an interrupted push) goes once it is more than a
//! day old, as locally.

use chrono::NaiveDateTime;
use serde::Serialize;

use super::catalog::{self, RemoteBackup};
use super::client::{runtime, Remote};
use super::config::RemoteConfig;
use crate::backup::retention::{self, Candidate, Decision, State};
use crate::backup::Settings;
use crate::core::layout::Layout;

/// What a remote prune did.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct RemotePruneReport {
    pub removed: Vec<String>,
    pub kept: usize,
    pub errors: Vec<String>,
    pub decisions: Vec<Decision>,
}

/// Retention's candidates for the remote's backups.
pub(crate) fn candidates(backups: &[RemoteBackup]) -> Vec<Candidate> {
    backups
        .iter()
        .map(|b| Candidate {
            kind: b.kind,
            name: b.name.clone(),
            stamp: b.stamp,
            state: if b.is_ok() {
                State::Ok
            } else if b.complete {
                State::Failed
            } else {
                State::Incomplete
            },
        })
        .collect()
}

/// Apply the retention of `settings.keep` to the remote (`dry_run`: decide only).
pub(crate) fn prune(
    layout: &Layout,
    cfg: &RemoteConfig,
    settings: &Settings,
    now: NaiveDateTime,
    dry_run: bool,
) -> anyhow::Result<RemotePruneReport> {
    let _lock = super::take_lock(layout, &cfg.name)?;
    let remote = Remote::open(cfg)?;
    runtime()?.block_on(async {
        let backups = catalog::list(&remote).await?;
        let decisions = retention::plan(&candidates(&backups), now, &settings.keep);
        let mut report = RemotePruneReport::default();
        for d in &decisions {
            if !d.delete {
                report.kept += 1;
                continue;
            }
            let Some(b) = backups.iter().find(|b| b.kind == d.kind && b.name == d.name) else {
                continue;
            };
            if dry_run {
                report.removed.push(b.id());
                continue;
            }
            match delete_backup(&remote, b).await {
                Ok(()) => {
                    tracing::info!(remote = %cfg.name, backup = %b.id(), reason = %d.reason, "old remote backup removed");
                    report.removed.push(b.id());
                }
                Err(e) => report.errors.push(format!(
                    "cannot remove the old remote backup {} from {}: {e:#}",
                    b.id(),
                    cfg.name
                )),
            }
        }
        report.decisions = decisions;
        anyhow::Ok(report)
    })
}

/// Delete one remote backup: manifest first, index next, then every other object.
pub(crate) async fn delete_backup(remote: &Remote, b: &RemoteBackup) -> anyhow::Result<()> {
    super::objects::delete_set(remote, &remote.backup_key(b.kind, &b.name), &b.listing).await
}
