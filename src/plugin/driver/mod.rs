//! The volume logic behind the VolumeDriver calls: create, remove, mount, unmount, get, list.
//!
//! One file per family of calls: [`create`] (Create and the checks on where data may live),
//! [`mount`] (Mount, Unmount, Path, Get, List), [`remove`] (Remove and the trash) and
//! [`recover`] (the agreement of records and mounts after a restart).

mod create;
mod mount;
mod recover;
mod remove;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::core::layout::{HostView, Layout};
use crate::core::names::VolumeName;
use crate::core::store::Store;
use crate::fs::durable;
pub use crate::plugin::error::{DriverError, Result};
use crate::plugin::mounts::Sys;

/// What the driver needs to know besides the root.
#[derive(Clone, Debug)]
pub struct DriverSettings {
    pub mount_dir: PathBuf,
    /// Allowed bind roots, as host paths.
    pub bind_roots: Vec<PathBuf>,
    pub view: HostView,
    pub snapshot_wait: Duration,
    /// Host directories no `device=` may lie in or around besides the state root's own
    /// (the backup root, for one).
    pub protected: Vec<PathBuf>,
}

/// The volume driver. Every call re-reads the records on disk under the volume's lock.
pub struct Driver {
    store: Store,
    layout: Layout,
    sys: Arc<dyn Sys>,
    settings: DriverSettings,
}

impl Driver {
    pub fn new(layout: Layout, sys: Arc<dyn Sys>, settings: DriverSettings) -> io::Result<Driver> {
        layout.ensure()?;
        durable::ensure_dir(&settings.mount_dir, 0o755)?;
        Ok(Driver {
            store: Store::new(layout.clone()),
            layout,
            sys,
            settings,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where a volume is mounted for containers.
    pub fn mountpoint(&self, name: &VolumeName) -> PathBuf {
        self.settings.mount_dir.join(name)
    }

    fn is_live_mount(&self, target: &Path) -> bool {
        self.sys.is_mount_point(target).unwrap_or(false)
    }
}
