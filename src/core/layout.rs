//! Settings shared by every process, and the layout of the state root.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::core::names::VolumeName;

/// Default state root.
pub const DEFAULT_ROOT: &str = "/var/lib/allspark";
/// Default plugin socket (legacy discovery path, driver name `allspark`).
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/allspark.sock";
/// Default backup root (as the platform's old script).
pub const DEFAULT_BACKUP_ROOT: &str = "/backups/allspark";
/// Default bound on how long a Mount waits for a snapshot in progress.
pub const DEFAULT_SNAPSHOT_WAIT: Duration = Duration::from_secs(60);

/// Where everything lives under the state root. One function per path.
#[derive(Clone, Debug)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }
    /// Volume records (`<name>.json`).
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state").join("volumes")
    }
    pub fn record(&self, name: &VolumeName) -> PathBuf {
        self.state_dir().join(format!("{name}.json"))
    }
    /// Mount references of this boot (`<name>.json`): runtime state, never fsynced.
    pub fn refs_dir(&self) -> PathBuf {
        self.root.join("state").join("refs")
    }
    pub fn refs(&self, name: &VolumeName) -> PathBuf {
        self.refs_dir().join(format!("{name}.json"))
    }
    /// Cached usage figures written by the agent (`<name>.json`).
    pub fn usage_dir(&self) -> PathBuf {
        self.root.join("state").join("usage")
    }
    pub fn usage(&self, name: &VolumeName) -> PathBuf {
        self.usage_dir().join(format!("{name}.json"))
    }
    /// Agent-side state (backup runs, event cursors, stopped containers).
    pub fn agent_dir(&self) -> PathBuf {
        self.root.join("state").join("agent")
    }
    /// Remote configurations (`<name>.json`, root-only) and their push state.
    pub fn remotes_dir(&self) -> PathBuf {
        self.root.join("state").join("remotes")
    }
    /// Journals of Creates with `template=` under way (`<name>.json`, see [`crate::ops::template`]).
    pub fn filling_dir(&self) -> PathBuf {
        self.root.join("state").join("filling")
    }
    pub fn volumes_dir(&self) -> PathBuf {
        self.root.join("volumes")
    }
    /// Managed data directory of a volume without `device`.
    pub fn managed_data(&self, name: &VolumeName) -> PathBuf {
        self.volumes_dir().join(name).join("data")
    }
    pub fn trash_dir(&self) -> PathBuf {
        self.root.join("trash")
    }
    /// Private mount where flagged bind mounts are prepared before they go to the mount directory.
    pub fn staging_dir(&self) -> PathBuf {
        self.root.join("staging")
    }
    pub fn mounts_dir(&self) -> PathBuf {
        self.root.join("mounts")
    }
    pub fn spool_dir(&self) -> PathBuf {
        self.root.join("spool")
    }
    /// Requests to measure a volume now (empty files named after the volume).
    pub fn measure_dir(&self) -> PathBuf {
        self.root.join("state").join("measure")
    }
    pub fn measure_request(&self, name: &VolumeName) -> PathBuf {
        self.measure_dir().join(name)
    }
    pub fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }
    /// Short-lived record lock of a volume.
    pub fn record_lock(&self, name: &VolumeName) -> PathBuf {
        self.locks_dir().join(format!("{name}.lock"))
    }
    /// Snapshot lock of a volume, held by the agent while it archives.
    pub fn snapshot_lock(&self, name: &VolumeName) -> PathBuf {
        self.locks_dir().join(format!("{name}.snap"))
    }
    /// Lock held by the one plugin process serving this root.
    pub fn plugin_lock(&self) -> PathBuf {
        self.root.join("plugin.lock")
    }
    /// Mount points of `btrfs-image` pools (`<name>`).
    pub fn pools_dir(&self) -> PathBuf {
        self.root.join("pools")
    }
    pub fn pool_mount(&self, name: &str) -> PathBuf {
        self.pools_dir().join(name)
    }
    /// The pools the plugin serves, for every process (see `crate::pool`).
    pub fn pools_registry(&self) -> PathBuf {
        self.root.join("state").join("pools.json")
    }
    /// Held while a pool is prepared or mounted again.
    pub fn pool_lock(&self, name: &str) -> PathBuf {
        self.locks_dir().join(format!("{name}.pool"))
    }
    /// Held while archives are written from a volume's read-only snapshots (never the
    /// snapshot lock: a Mount does not wait for an archive).
    pub fn archive_lock(&self, name: &VolumeName) -> PathBuf {
        self.locks_dir().join(format!("{name}.archive"))
    }
    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }
    pub fn volume_snapshots(&self, name: &VolumeName) -> PathBuf {
        self.snapshots_dir().join(name)
    }
    /// The plugin's own directories: a `device` may not point into them.
    pub fn own_dirs(&self) -> Vec<PathBuf> {
        [
            "state",
            "staging",
            "volumes",
            "mounts",
            "spool",
            "locks",
            "snapshots",
            "trash",
            "pools",
        ]
        .iter()
        .map(|d| self.root.join(d))
        .collect()
    }
    /// Create the layout (mode 0700: state is root-only).
    pub fn ensure(&self) -> std::io::Result<()> {
        for d in [
            self.state_dir(),
            self.refs_dir(),
            self.usage_dir(),
            self.measure_dir(),
            self.agent_dir(),
            self.volumes_dir(),
            self.trash_dir(),
            self.spool_dir(),
            self.locks_dir(),
            self.snapshots_dir(),
        ] {
            crate::fs::durable::ensure_dir(&d, 0o700)?;
        }
        crate::fs::durable::ensure_dir(&self.mounts_dir(), 0o755)?;
        Ok(())
    }
}

/// Where host paths are reachable from this process (`ALLSPARK_HOST_PREFIX`).
/// Users always write host paths; inside the managed plugin the host's `/` is at `/host`.
#[derive(Clone, Debug, Default)]
pub struct HostView {
    pub prefix: PathBuf,
}

impl HostView {
    pub fn new(prefix: Option<&Path>) -> HostView {
        HostView {
            prefix: prefix.map(Path::to_path_buf).unwrap_or_default(),
        }
    }
    /// The local path of a host path.
    pub fn local(&self, host_path: &Path) -> PathBuf {
        if self.prefix.as_os_str().is_empty() {
            return host_path.to_path_buf();
        }
        let rel = host_path.strip_prefix("/").unwrap_or(host_path);
        self.prefix.join(rel)
    }
}

/// Parse a colon-separated list of paths (`ALLSPARK_BIND_ROOTS`).
pub fn split_paths(list: &str) -> Vec<PathBuf> {
    list.split(':')
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect()
}
