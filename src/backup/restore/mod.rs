//! Restoring a backup directory: sizes and dump checksums first, stop the containers using the volumes (and always start them again), each volume through a staging directory and an atomic swap, then each dump into its labelled restore command.
//!
//! Volumes are restored with the snapshot restore's pieces
//! ([`staging_dir`](crate::snapshot::restore::staging_dir), [`crate::archive::extract`],
//! [`swap_in`](crate::snapshot::restore::swap_in)): each archive is
//! read once, decompressed on every core and hashed on the way; its sha256
//! is compared with the manifest before the swap. The old content is only
//! deleted after the swap, and a failure (a damaged member or frame, a
//! checksum mismatch) leaves the volume untouched. A volume still mounted
//! after its containers were stopped is refused.
//!
//! A dump `<name>.sql.gz` goes, gunzipped, into the stdin of
//! `sh -c <command>` in the running container labelled
//! `allspark.restore.exec=<command>` whose dump name (label
//! `allspark.backup.name`, else the container name) is `<name>` and which is
//! the dump's recorded producer (the manifest's `producer`: the same compose
//! project and service, else the same container name; see
//! [`select_hook`]), after the
//! volumes are back and their containers started again. Before it, allspark
//! waits (at most [`READY_TIMEOUT`]) until that container runs and, if it
//! carries `allspark.restore.wait=<command>`, until that command exits 0
//! (e.g. `pg_isready -h 127.0.0.1 -U postgres`: the server accepts
//! connections). The restore command then runs **once**: a command that
//! failed half-way is never replayed blindly. It fails the restore when it
//! exits non-zero or prints error lines on stderr; the report names each
//! error line and, for `psql` (`psql:<stdin>:LINE: ERROR: …`), the failing
//! statement read back from the dump.
//!
//! Layout: [`plan`] (what a restore would do; nothing is changed), [`execute`] (carrying
//! the plan out: containers, volumes, dumps), `database` (one dump fed to its restore
//! command); the plan and report types live here.

mod database;
mod execute;
mod plan;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

pub(crate) use self::execute::execute;
pub(crate) use self::plan::plan;
pub(crate) use super::feed::parse_database_args;
use super::manifest::BackupManifest;
use crate::core::names::VolumeName;
use crate::docker::ContainerInfo;

/// How long a restore waits for a database container to run and pass its `allspark.restore.wait` check.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// What to restore from a backup directory.
#[derive(Clone, Debug, Default)]
pub(crate) struct RestoreRequest {
    pub dir: PathBuf,
    /// Only these volumes (and no dump unless `databases` names some).
    pub volumes: Vec<String>,
    /// Only these dumps (and no volume unless `volumes` names some).
    pub databases: Vec<String>,
    /// Operator overrides (`--database NAME=CONTAINER`): dump name -> the container (name or
    /// id) to feed it to, whoever produced it.
    pub targets: std::collections::BTreeMap<String, String>,
}

/// A volume to restore.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct PlannedVolume {
    pub name: VolumeName,
    pub file: String,
    /// Its data directory (`None`: no such allspark volume here).
    pub target: Option<PathBuf>,
    /// `parent=` volumes whose data lies inside it: replaced too, must not be mounted either.
    pub nested: Vec<VolumeName>,
}

pub(crate) use super::feed::PlannedDump;

/// Everything a restore would do.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct RestorePlan {
    pub dir: PathBuf,
    #[serde(skip)]
    pub manifest: BackupManifest,
    pub volumes: Vec<PlannedVolume>,
    pub dumps: Vec<PlannedDump>,
    /// Running containers that use the volumes: stopped, then started again.
    pub to_stop: Vec<String>,
    #[serde(skip)]
    pub to_stop_info: Vec<ContainerInfo>,
    /// Things that will fail as it stands, one sentence each.
    pub problems: Vec<String>,
}

impl RestorePlan {
    /// What will be overwritten, for the confirmation message.
    pub(crate) fn describe(&self) -> String {
        let mut s = format!(
            "restoring {} (taken {}, outcome {}) will:\n",
            self.dir.display(),
            self.manifest
                .timestamp
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            self.manifest.outcome_str()
        );
        if !self.to_stop.is_empty() {
            s += &format!(
                "  stop these running containers, and start them again afterwards: {}\n",
                self.to_stop.join(", ")
            );
        }
        for v in &self.volumes {
            match &v.target {
                Some(t) => {
                    s += &format!(
                        "  REPLACE the whole content of volume {} ({}) with {}{}\n",
                        v.name,
                        t.display(),
                        v.file,
                        if v.nested.is_empty() {
                            String::new()
                        } else {
                            format!(
                                " (and so of the volumes inside it: {})",
                                v.nested.join(", ")
                            )
                        }
                    )
                }
                None => s += &format!("  (volume {} does not exist here)\n", v.name),
            }
        }
        for d in &self.dumps {
            match (&d.container, &d.command) {
                (Some(c), Some(cmd)) => {
                    s += &format!(
                    "  feed {} into `{cmd}` in container {c} (overwrites that database's data){}\n",
                    d.file,
                    match (&d.producer, d.overridden) {
                        (Some(p), true) => format!(
                            "; chosen with --database, the dump was written by container {}",
                            p.container
                        ),
                        (None, true) => "; chosen with --database".to_string(),
                        _ => String::new(),
                    }
                )
                }
                _ => s += &format!("  (no restore container for {})\n", d.file),
            }
        }
        for p in &self.problems {
            s += &format!("  problem: {p}\n");
        }
        s
    }
}

/// The result of one item.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ItemResult {
    /// `volume`, `database`, `container`.
    pub kind: String,
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// What [`execute`] did.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct RestoreReport {
    pub items: Vec<ItemResult>,
}

impl RestoreReport {
    pub(crate) fn ok(&self) -> bool {
        self.items.iter().all(|i| i.ok)
    }
    fn push(&mut self, kind: &str, name: &str, r: Result<String, String>) {
        let (ok, detail) = match r {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        if ok {
            tracing::info!(kind, name, %detail, "restored");
        } else {
            tracing::error!(kind, name, %detail, "restore failed");
        }
        self.items.push(ItemResult {
            kind: kind.into(),
            name: name.into(),
            ok,
            detail,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::feed::select_hook;
    use crate::backup::manifest::Producer;

    fn container(name: &str, labels: &[(&str, &str)]) -> ContainerInfo {
        ContainerInfo::fixture(name, labels)
    }

    #[test]
    fn a_dump_goes_only_to_its_producer() {
        let attacker = container("attacker", &[("allspark.backup.name", "victim")]);
        let victim = container("victim", &[]);
        let by_attacker = Producer::of(&attacker);
        let by_victim = Producer::of(&victim);
        // The attacker's dump is not fed to the victim: refused, naming both.
        let e = select_hook("victim", Some(&by_attacker), &[&victim]).unwrap_err();
        assert!(
            e.contains("container attacker") && e.contains("container victim"),
            "{e}"
        );
        // The victim's own dump goes to it, not to an impostor with its dump name.
        let got = select_hook("victim", Some(&by_victim), &[&attacker, &victim]).unwrap();
        assert_eq!(got.iter().map(|c| &c.name).collect::<Vec<_>>(), ["victim"]);
        // Compose: a recreated container of the same service takes it.
        let labels = [
            (crate::backup::manifest::COMPOSE_PROJECT, "shop"),
            (crate::backup::manifest::COMPOSE_SERVICE, "db"),
        ];
        let old = Producer::of(&container("shop-db-1", &labels));
        let new = container("shop_db_1", &labels);
        assert_eq!(select_hook("db", Some(&old), &[&new]).unwrap().len(), 1);
        // Old manifests (no producer): the dump name alone, as before.
        assert_eq!(
            select_hook("victim", None, &[&attacker, &victim])
                .unwrap()
                .len(),
            2
        );
        // No candidate at all: no refusal here, the caller says none runs.
        assert!(select_hook("victim", Some(&by_victim), &[])
            .unwrap()
            .is_empty());
    }
}
