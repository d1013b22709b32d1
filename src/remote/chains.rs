//! Which volumes send their snapshot chains off-site (`offsite=snapshots`, the default of `class=critical`), pushing them, and the agent's watcher that pushes each completed snapshot and catches up after downtime.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::client::{runtime, Remote};
use super::config::{self, RemoteConfig};
use super::crypt::Sealer;
use super::snapshots::{self, VolumePush};
use crate::backup::run::ItemProgress;
use crate::core::layout::Layout;
use crate::core::names::VolumeName;
use crate::core::options::Offsite;
use crate::core::store::Store;

/// What a snapshot push did, over every volume.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct ChainsReport {
    pub remote: String,
    pub volumes: Vec<VolumePush>,
    /// One sentence per volume that failed.
    pub errors: Vec<String>,
}

impl ChainsReport {
    pub(crate) fn ok(&self) -> bool {
        self.errors.is_empty()
    }
    pub(crate) fn summary(&self) -> String {
        let pushed: usize = self.volumes.iter().map(|v| v.pushed.len()).sum();
        let pruned: usize = self.volumes.iter().map(|v| v.pruned.len()).sum();
        format!(
            "remote {}: {pushed} snapshot(s) of {} volume(s) pushed, {pruned} old one(s) removed{}",
            self.remote,
            self.volumes.len(),
            if self.ok() {
                String::new()
            } else {
                format!(", {} volume(s) FAILED", self.errors.len())
            }
        )
    }
}

/// The volumes whose snapshot chains go off-site.
pub(crate) fn offsite_volumes(layout: &Layout) -> anyhow::Result<Vec<VolumeName>> {
    let (records, _) = Store::new(layout.clone()).all()?;
    Ok(records
        .iter()
        .filter(|r| r.spec.offsite() == Offsite::Snapshots)
        .map(|r| r.name.clone())
        .collect())
}

/// Push the snapshots of `volumes` (each with its record and `keep=`) to the remote and apply its retention.
/// `Err` only when nothing could be tried; each volume's failure is a sentence in the report.
pub(crate) fn push(
    layout: &Layout,
    cfg: &RemoteConfig,
    volumes: &[VolumeName],
    progress: Option<ItemProgress>,
) -> anyhow::Result<ChainsReport> {
    let _lock = super::take_lock(layout, &cfg.name)?;
    let remote = Remote::open(cfg)?;
    let sealer = Sealer::of(cfg)?;
    let store = Store::new(layout.clone());
    let mut report = ChainsReport {
        remote: cfg.name.clone(),
        ..Default::default()
    };
    let rt = runtime()?;
    for v in volumes {
        let rec = match store.load(v) {
            Ok(r) => r,
            Err(e) => {
                report.errors.push(format!("volume {v}: {e}"));
                continue;
            }
        };
        let keep = rec.as_ref().map(|r| r.spec.keep).unwrap_or_default();
        let r = rt.block_on(snapshots::push_volume(
            &remote,
            &sealer,
            layout,
            v,
            rec.as_ref().map(|r| &r.options),
            &keep,
            progress.as_ref(),
        ));
        match r {
            Ok(p) => {
                if !p.pushed.is_empty() || !p.pruned.is_empty() {
                    tracing::info!(remote = %cfg.name, volume = %v, pushed = p.pushed.len(), pruned = p.pruned.len(), bytes = p.bytes, "snapshots pushed");
                }
                report.volumes.push(p);
            }
            Err(e) => {
                let msg = format!("{e:#}");
                tracing::error!(remote = %cfg.name, volume = %v, error = %msg, "snapshot push FAILED");
                report.errors.push(msg);
                // The endpoint or the credentials fail every volume alike: try again later.
                break;
            }
        }
    }
    Ok(report)
}

/// The agent's snapshot uploader: remembers the newest snapshot pushed per volume, so a poll
/// touches the remote only when a volume has a new snapshot (or after a failure, with backoff).
/// It starts empty, so its first poll checks every volume against the remote: the catch-up
/// after downtime.
pub(crate) struct Watcher {
    remote: String,
    pushed: BTreeMap<VolumeName, Option<String>>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Watcher {
    pub(crate) fn new(remote: &str) -> Watcher {
        Watcher {
            remote: remote.to_string(),
            pushed: BTreeMap::new(),
            retry_at: None,
            backoff: Duration::from_secs(5),
        }
    }

    /// One poll: push the volumes whose newest local snapshot was not pushed yet.
    pub(crate) fn run_once(&mut self, layout: &Layout) {
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let volumes = match offsite_volumes(layout) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot list the volumes for off-site snapshots");
                return;
            }
        };
        let newest: BTreeMap<VolumeName, Option<String>> = volumes
            .into_iter()
            .map(|v| {
                let id = crate::snapshot::catalog::list(layout, &v)
                    .ok()
                    .and_then(|l| l.last().map(|m| m.id.clone()));
                (v, id)
            })
            .collect();
        let todo: Vec<VolumeName> = newest
            .iter()
            .filter(|(v, id)| id.is_some() && self.pushed.get(*v) != Some(id))
            .map(|(v, _)| v.clone())
            .collect();
        self.pushed.retain(|v, _| newest.contains_key(v));
        if todo.is_empty() {
            return;
        }
        let cfg = match config::load(layout, &self.remote) {
            Ok(c) => c,
            Err(e) => return self.failed(&format!("{e:#}")),
        };
        match push(layout, &cfg, &todo, None) {
            Ok(r) => {
                let failed: BTreeSet<&str> = todo
                    .iter()
                    .map(VolumeName::as_str)
                    .filter(|v| !r.volumes.iter().any(|p| p.volume == *v))
                    .collect();
                for v in &todo {
                    if !failed.contains(v.as_str()) {
                        self.pushed.insert(v.clone(), newest[v].clone());
                    }
                }
                if r.ok() {
                    self.retry_at = None;
                    self.backoff = Duration::from_secs(5);
                } else {
                    self.failed(&r.errors.join("; "));
                }
            }
            Err(e) => self.failed(&format!("{e:#}")),
        }
    }

    fn failed(&mut self, why: &str) {
        tracing::error!(remote = %self.remote, error = %why, retry_in_secs = self.backoff.as_secs(), "off-site snapshot push FAILED; retrying later");
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(Duration::from_secs(300));
    }
}
