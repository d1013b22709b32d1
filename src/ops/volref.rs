//! Resolving a volume name to its data directory: allspark records first, then Docker's own volumes.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;

use crate::core::layout::{HostView, Layout};
use crate::core::names::VolumeName;
use crate::core::store::{Store, VolumeRecord};
use crate::fs::beneath::{Dir, Missing};
use crate::pool::location::Locate;
use crate::snapshot::restore::SwapTarget;

/// A volume whose data this process can reach.
#[derive(Debug, Clone)]
pub struct VolumeRef {
    pub name: VolumeName,
    /// The data directory as this process reaches it.
    pub dir: PathBuf,
    /// `allspark`, or the Docker driver of a foreign volume.
    pub driver: String,
    pub record: Option<Arc<VolumeRecord>>,
}

impl VolumeRef {
    /// Where a restore swaps a new tree in (see [`SwapTarget`]): through descriptors for an
    /// allspark volume, by Docker's own path for a foreign one.
    pub fn swap_target(&self, layout: &Layout, view: &HostView) -> anyhow::Result<SwapTarget> {
        Ok(match &self.record {
            Some(rec) => SwapTarget::of(&rec.data, layout, view)?,
            None => SwapTarget::by_path(&self.dir)?,
        })
    }

    /// The data directory, opened without following symlinks (see [`crate::fs::beneath`]):
    /// read it through [`Dir::proc_path`], never by its name again.
    pub fn open(&self, layout: &Layout, view: &HostView) -> anyhow::Result<Dir> {
        Ok(match &self.record {
            Some(rec) => rec.data.open(layout, view, Missing::Refuse)?.dir,
            None => Dir::open_anchor(&self.dir)?,
        })
    }
}

/// Find `name`: an allspark record, else (when Docker is reachable) a Docker volume.
pub(crate) fn resolve(
    layout: &Layout,
    view: &HostView,
    docker_url: &str,
    name: &VolumeName,
) -> anyhow::Result<VolumeRef> {
    if let Some(rec) = Store::new(layout.clone()).load(name)? {
        return Ok(VolumeRef {
            name: name.clone(),
            dir: rec.data.local_path(layout, view),
            driver: "allspark".into(),
            record: Some(rec),
        });
    }
    let found = crate::docker::block_on(async {
        let d = crate::docker::connect(docker_url).await?;
        crate::docker::volume(&d, name).await
    })?;
    match found {
        Ok(Some(v)) => Ok(VolumeRef {
            name: name.clone(),
            dir: view.local(&v.mountpoint),
            driver: v.driver,
            record: None,
        }),
        Ok(None) => {
            bail!("no such volume: {name} (neither an allspark volume nor a Docker volume)")
        }
        Err(e) => bail!("no allspark volume {name}, and Docker could not be asked: {e:#}"),
    }
}
