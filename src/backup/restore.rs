//! Restoring a backup directory: sizes and dump checksums first, stop the containers using the volumes (and always start them again), each volume through a staging directory and an atomic swap, then each dump into its labelled restore command.
//!
//! Volumes are restored with the snapshot restore's pieces
//! ([`staging_dir`], [`archive::extract`], [`swap_in`]): each archive is
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

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use bollard::Docker;
use flate2::read::MultiGzDecoder;
use serde::Serialize;

pub use super::feed::{chosen_hook, parse_database_args, select_hook};
use super::feed::{fed_once, take_hook};
use super::manifest::{self, BackupManifest, FileEntry, FileKind};
use super::quiesce::StopGuard;
use super::run::{dump_name, running_containers, ItemProgress};
use super::{verify, Settings, LABEL_RESTORE, LABEL_RESTORE_WAIT};
use crate::archive::{self, ExtractOptions};
use crate::context::Ctx;
use crate::core::crashpoint::crash_point;
use crate::core::names::VolumeName;
use crate::core::store::Store;
use crate::docker::ContainerInfo;
use crate::fs::beneath::Missing;
use crate::fs::durable::{FileLock, LockKind};
use crate::pool::location::Locate;
use crate::pool::topology;
use crate::snapshot::restore::{
    remove_staged, remove_stale_staging, staging_dir, swap_in, SwapTarget,
};
use crate::snapshot::Counting;

/// How long a restore waits for a database container to run and pass its `allspark.restore.wait` check.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a volume may stay mounted after its containers were stopped (Docker unmounts asynchronously).
const UNMOUNT_WAIT: Duration = Duration::from_secs(15);

/// What to restore from a backup directory.
#[derive(Clone, Debug, Default)]
pub struct RestoreRequest {
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
pub struct PlannedVolume {
    pub name: VolumeName,
    pub file: String,
    /// Its data directory (`None`: no such allspark volume here).
    pub target: Option<PathBuf>,
    /// `parent=` volumes whose data lies inside it: replaced too, must not be mounted either.
    pub nested: Vec<VolumeName>,
}

pub use super::feed::PlannedDump;

/// Everything a restore would do.
#[derive(Clone, Debug, Serialize)]
pub struct RestorePlan {
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
    pub fn describe(&self) -> String {
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

/// Work out what restoring `req` means now (nothing is changed).
pub fn plan(ctx: &Ctx, settings: &Settings, req: &RestoreRequest) -> anyhow::Result<RestorePlan> {
    let m = manifest::read_required(&req.dir)?;
    if m.files.is_empty() && m.outcome.is_none() {
        bail!(
            "{} was made by the old backup script (no checksums, old file names): restore it with tar as before, or take a new backup with `allspark backup run`",
            req.dir.display()
        );
    }
    let all = req.volumes.is_empty() && req.databases.is_empty();
    let in_backup = |kind: FileKind| -> Vec<String> {
        m.files
            .iter()
            .filter(|f| f.kind == kind)
            .map(|f| f.source.clone())
            .collect()
    };
    for v in &req.volumes {
        if let Some(dump) = m.covered_by_dump.get(v) {
            bail!(
                "volume {v} is not archived in {}: its database dump {dump} stands for it (a running database's files are never archived); restore it with --database {dump}",
                req.dir.display()
            );
        }
    }
    for (asked, kind, what) in [
        (&req.volumes, FileKind::Volume, "volume"),
        (&req.databases, FileKind::Database, "dump"),
    ] {
        let have = in_backup(kind);
        for a in asked {
            if !have.contains(a) {
                bail!(
                    "{what} {a} is not in {} (it has: {}); see its manifest.json",
                    req.dir.display(),
                    if have.is_empty() {
                        "none".to_string()
                    } else {
                        have.join(", ")
                    }
                );
            }
        }
    }
    let store = Store::new(ctx.layout.clone());
    let records = store.all().map(|(ok, _)| ok).unwrap_or_default();
    let mut problems = Vec::new();
    let mut volumes = Vec::new();
    for f in m.files.iter().filter(|f| f.kind == FileKind::Volume) {
        if !(all || req.volumes.contains(&f.source)) {
            continue;
        }
        let name = match VolumeName::parse(&f.source) {
            Ok(n) => n,
            Err(e) => {
                problems.push(format!("the backup's volume entry {:?}: {e}", f.source));
                continue;
            }
        };
        let target = match store.load(&name) {
            Ok(Some(rec)) => Some(rec.data.local_path(&ctx.layout, &ctx.view)),
            Ok(None) => {
                let opts: Vec<String> = f
                    .options
                    .iter()
                    .map(|(k, v)| format!("-o {k}={v}"))
                    .collect();
                problems.push(format!(
                    "volume {} does not exist here; create it first (`docker volume create -d allspark {}{}{}`) and restore again",
                    f.source,
                    opts.join(" "),
                    if opts.is_empty() { "" } else { " " },
                    f.source
                ));
                None
            }
            Err(e) => {
                problems.push(format!("volume {}: {e}", f.source));
                None
            }
        };
        let nested = super::run::with_descendants(&records, &name)
            .into_iter()
            .skip(1)
            .collect();
        volumes.push(PlannedVolume {
            name,
            file: f.name.clone(),
            target,
            nested,
        });
    }
    let mut dumps: Vec<PlannedDump> = m
        .files
        .iter()
        .filter(|f| f.kind == FileKind::Database)
        .filter(|f| all || req.databases.contains(&f.source))
        .map(|f| PlannedDump {
            name: f.source.clone(),
            file: f.name.clone(),
            container: None,
            container_id: None,
            command: None,
            wait: None,
            producer: f.producer.clone(),
            overridden: false,
        })
        .collect();

    let mut to_stop: Vec<ContainerInfo> = Vec::new();
    let docker_result = crate::docker::block_on(async {
        let docker = crate::docker::connect(&ctx.docker_url).await?;
        let mut users = Vec::new();
        for v in volumes.iter().filter(|v| v.target.is_some()) {
            for name in std::iter::once(&v.name).chain(v.nested.iter()) {
                users.extend(
                    crate::docker::containers(&docker, Some(name))
                        .await?
                        .into_iter()
                        .filter(|c| c.running),
                );
            }
        }
        let running = running_containers(&docker, settings.container_label.as_ref()).await?;
        let everyone = if req.targets.is_empty() {
            Vec::new()
        } else {
            crate::docker::containers(&docker, None).await?
        };
        anyhow::Ok((users, running, everyone))
    })
    .and_then(|r| r);
    match docker_result {
        Ok((users, running, everyone)) => {
            for u in users {
                if !to_stop.iter().any(|c| c.id == u.id) {
                    to_stop.push(u);
                }
            }
            for d in &mut dumps {
                if let Some(target) = req.targets.get(&d.name) {
                    match chosen_hook(&d.name, target, &everyone) {
                        Ok(c) => {
                            d.overridden = true;
                            take_hook(d, c);
                        }
                        Err(e) => problems.push(e),
                    }
                    continue;
                }
                let hooks: Vec<&ContainerInfo> = running
                    .iter()
                    .filter(|c| {
                        c.labels
                            .get(LABEL_RESTORE)
                            .is_some_and(|v| !v.trim().is_empty())
                    })
                    .filter(|c| dump_name(c) == d.name)
                    .collect();
                let hooks = match select_hook(&d.name, d.producer.as_ref(), &hooks) {
                    Ok(h) => h,
                    Err(e) => {
                        problems.push(e);
                        continue;
                    }
                };
                match hooks.as_slice() {
                    [c] => take_hook(d, c),
                    [] => problems.push(format!(
                        "no running container is labelled {LABEL_RESTORE}=<command> with dump name {} (its allspark.backup.name label, or its name); start the database container with that label and restore again",
                        d.name
                    )),
                    many => problems.push(format!(
                        "several running containers ({}) take dump {} with {LABEL_RESTORE}; keep one",
                        many.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", "),
                        d.name
                    )),
                }
            }
        }
        Err(e) => {
            if !dumps.is_empty() {
                problems.push(format!(
                    "{e:#}: the dumps cannot be restored without Docker; start dockerd or fix --docker"
                ));
            }
            if !volumes.is_empty() {
                tracing::warn!(error = %format!("{e:#}"), "Docker is unreachable: containers using the volumes cannot be stopped; mounted volumes will be refused");
            }
        }
    }
    to_stop.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(RestorePlan {
        dir: req.dir.clone(),
        to_stop: to_stop.iter().map(|c| c.name.clone()).collect(),
        to_stop_info: to_stop,
        manifest: m,
        volumes,
        dumps,
        problems,
    })
}

/// The result of one item.
#[derive(Clone, Debug, Serialize)]
pub struct ItemResult {
    /// `volume`, `database`, `container`.
    pub kind: String,
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// What [`execute`] did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RestoreReport {
    pub items: Vec<ItemResult>,
}

impl RestoreReport {
    pub fn ok(&self) -> bool {
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

/// Carry out a plan. `Err` when nothing was touched (bad checksums, lock);
/// otherwise every item has its own result in the report.
pub fn execute(
    ctx: &Ctx,
    plan: &RestorePlan,
    progress: Option<ItemProgress>,
) -> anyhow::Result<RestoreReport> {
    let _lock = super::take_lock(&ctx.layout)?;
    let selected: Vec<&str> = plan
        .volumes
        .iter()
        .map(|v| v.file.as_str())
        .chain(plan.dumps.iter().map(|d| d.file.as_str()))
        .collect();
    // Dumps are fed to a command, which cannot be undone: read and check them now.
    // Volume archives are hashed while they are extracted, and checked before the swap.
    if let Err(errors) = verify::check_checksums(
        &plan.dir,
        &plan.manifest,
        |f| selected.contains(&f.name.as_str()),
        |f| f.kind != FileKind::Volume,
    ) {
        bail!(
            "refusing to restore, nothing was changed: {}",
            errors.join("; ")
        );
    }
    let mut report = RestoreReport::default();
    let rt = crate::core::runtime::shared()?;
    let docker: Option<Docker> = rt
        .block_on(crate::docker::connect(&ctx.docker_url))
        .map_err(|e| tracing::warn!(error = %format!("{e:#}"), "Docker is unreachable"))
        .ok();

    {
        let mut guard = docker.as_ref().map(|d| {
            StopGuard::new(
                &ctx.layout,
                rt,
                d,
                &format!("restore {}", plan.dir.display()),
            )
        });
        if let Some(g) = guard.as_mut() {
            if !plan.to_stop_info.is_empty() {
                match g.record(&plan.to_stop_info) {
                    Ok(()) => {
                        for c in &plan.to_stop_info {
                            if let Err(e) = g.stop(c) {
                                report.push("container", &c.name, Err(e));
                            }
                        }
                    }
                    Err(e) => report.push(
                        "container",
                        &plan.to_stop.join(","),
                        Err(format!("{e:#}; no container was stopped")),
                    ),
                }
            }
        }
        for v in &plan.volumes {
            let r = match &v.target {
                Some(target) => match plan.manifest.file(&v.file) {
                    Some(entry) => {
                        restore_volume(ctx, &plan.dir, v, entry, target, progress.as_ref())
                    }
                    None => Err(format!("{} is not in the manifest", v.file)),
                },
                None => Err(format!(
                    "volume {} does not exist here; create it and restore again",
                    v.name
                )),
            };
            report.push("volume", &v.name, r);
        }
        crash_point("restore.volumes-done");
        if let Some(mut g) = guard {
            for e in g.restart_all() {
                report.push("container", "", Err(e));
            }
        }
    }

    for d in &plan.dumps {
        let r = match (&docker, &d.container_id, &d.command) {
            (Some(docker), Some(id), Some(cmd)) => {
                let item = format!("restore {}", d.name);
                if let Some(p) = &progress {
                    p(&item, Some(0));
                }
                let r = fed_once(&ctx.layout, d, || {
                    rt.block_on(restore_dump(docker, &plan.dir, d, id, cmd))
                });
                if let Some(p) = &progress {
                    p(&item, None);
                }
                r.map_err(|e| {
                    format!(
                        "{e}; once fixed, run `allspark backup restore {} --database {} --yes`",
                        plan.dir.display(),
                        d.name
                    )
                })
            }
            (None, _, _) => Err("Docker is unreachable; start dockerd and restore the dump again with --database".into()),
            _ => Err(format!(
                "no running container labelled {LABEL_RESTORE} takes dump {}; start it and restore again with --database {}",
                d.name, d.name
            )),
        };
        report.push("database", &d.name, r);
    }
    Ok(report)
}

/// Wait until container `id` runs and passes its readiness check, then feed it the dump once.
async fn restore_dump(
    docker: &Docker,
    dir: &Path,
    d: &PlannedDump,
    id: &str,
    cmd: &str,
) -> Result<String, String> {
    let who = d.container.as_deref().unwrap_or(id);
    let deadline = Instant::now() + READY_TIMEOUT;
    wait_ready(docker, id, who, d.wait.as_deref(), deadline).await?;
    let path = dir.join(&d.file);
    let f = File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let input = MultiGzDecoder::new(BufReader::with_capacity(1 << 20, f));
    let out = super::dump::feed_stdin(docker, id, cmd, input).await?;
    if out.ok() {
        return Ok(format!(
            "{} bytes of SQL fed to `{cmd}` in container {who}: exit 0, no error reported",
            out.fed
        ));
    }
    Err(describe_failure(&path, &d.file, cmd, who, &out))
}

/// Wait until the container runs (not restarting) and its `wait` command, if any, exits 0.
async fn wait_ready(
    docker: &Docker,
    id: &str,
    who: &str,
    wait: Option<&str>,
    deadline: Instant,
) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let state = docker
            .inspect_container(id, None)
            .await
            .map_err(|e| format!("container {who} cannot be inspected ({e}); is it still there?"))?
            .state
            .unwrap_or_default();
        if state.running == Some(true) && state.restarting != Some(true) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "container {who} is not running {} s after the restore started (status {:?}); see `docker logs {who}`",
                READY_TIMEOUT.as_secs(),
                state.status
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let Some(wait) = wait else {
        return Ok(());
    };
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let last = match super::dump::exec(docker, id, wait).await {
            Ok(o) if o.ok() => {
                tracing::info!(
                    container = who,
                    attempts,
                    waited_ms = started.elapsed().as_millis() as u64,
                    "database ready for the restore"
                );
                return Ok(());
            }
            Ok(o) => format!(
                "exit status {}{}",
                o.exit_code.map_or("unknown".into(), |c| c.to_string()),
                [o.stderr_tail, o.stdout_tail]
                    .iter()
                    .find(|t| !t.is_empty())
                    .map(|t| format!(", output: {t}"))
                    .unwrap_or_default()
            ),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "container {who} was not ready within {} s: its {LABEL_RESTORE_WAIT} check `{wait}` failed {attempts} time(s), last with {last}; the dump was not fed",
                READY_TIMEOUT.as_secs()
            ));
        }
        tracing::info!(container = who, check = wait, result = %last, "waiting for the database to accept connections");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The sentence of a failed restore command: its status, each error line, and the statements they name.
fn describe_failure(
    path: &Path,
    file: &str,
    cmd: &str,
    who: &str,
    out: &super::dump::FeedOutcome,
) -> String {
    let mut s = match out.exit_code {
        Some(0) => format!(
            "`{cmd}` in container {who} exited 0 but reported {} error(s) on stderr: it went on after a failed statement (give psql `-v ON_ERROR_STOP=1`)",
            out.error_count
        ),
        Some(c) => format!("`{cmd}` in container {who} exited with status {c}"),
        None => format!("`{cmd}` in container {who} did not report an exit status"),
    };
    if let Some(e) = &out.input_error {
        s += &format!(" ({e})");
    }
    if out.errors.is_empty() {
        s += &out.tail;
        return s;
    }
    let lines: Vec<u64> = out.errors.iter().filter_map(|e| psql_line(e)).collect();
    let statements = statements_at(path, &lines);
    for e in &out.errors {
        s += &format!("; {e}");
        if let Some(st) = psql_line(e).and_then(|n| statements.get(&n)) {
            s += &format!(
                " [failing statement, line {} of {file}: {st}]",
                psql_line(e).unwrap_or_default()
            );
        }
    }
    if out.error_count > out.errors.len() {
        s += &format!(
            "; … and {} more error line(s)",
            out.error_count - out.errors.len()
        );
    }
    if out.fed > 0 {
        s += "; the statements before the error were applied (the database is partly restored)";
    }
    s
}

/// The script line a `psql` error names: `psql:<stdin>:24: ERROR:  …` → 24.
pub fn psql_line(error: &str) -> Option<u64> {
    let rest = error.trim_start().strip_prefix("psql:")?;
    let mut parts = rest.splitn(3, ':');
    let _source = parts.next()?;
    parts.next()?.trim().parse().ok()
}

/// The statements ending at `lines` (1-based) of a gzipped SQL file: the lines since the previous
/// `;`-terminated one (at most 10; else the line alone), whitespace collapsed, cut at 300 characters.
pub fn statements_at(path: &Path, lines: &[u64]) -> std::collections::HashMap<u64, String> {
    use std::io::BufRead;
    let mut out = std::collections::HashMap::new();
    let Some(&last) = lines.iter().max() else {
        return out;
    };
    let Ok(f) = File::open(path) else {
        return out;
    };
    let reader = BufReader::new(MultiGzDecoder::new(BufReader::new(f)));
    let mut pending: Vec<String> = Vec::new();
    for (i, line) in reader.split(b'\n').enumerate() {
        let n = i as u64 + 1;
        let Ok(bytes) = line else { break };
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let ends = text.trim_end().ends_with(';');
        let noise = text.trim().is_empty() || text.trim_start().starts_with("--");
        if !noise || lines.contains(&n) {
            pending.push(text);
        }
        if pending.len() > 10 {
            pending.remove(0);
        }
        if lines.contains(&n) {
            let shown: &[String] = if pending.len() < 10 {
                &pending
            } else {
                &pending[pending.len() - 1..]
            };
            let joined = shown
                .iter()
                .flat_map(|l| l.split_whitespace())
                .collect::<Vec<_>>()
                .join(" ");
            let cut: String = joined.chars().take(300).collect();
            out.insert(
                n,
                if cut.len() < joined.len() {
                    format!("{cut}…")
                } else {
                    cut
                },
            );
        }
        if ends {
            pending.clear();
        }
        if n >= last {
            break;
        }
    }
    out
}

/// Wait (bounded) until no container mounts the volume; the error says what to do.
fn wait_unmounted(store: &Store, name: &VolumeName) -> Result<(), String> {
    let deadline = Instant::now() + UNMOUNT_WAIT;
    loop {
        let count = {
            let _l = store.lock(name).map_err(|e| e.to_string())?;
            store
                .load(name)
                .map_err(|e| e.to_string())?
                .map(|r| r.mount_count())
                .unwrap_or(0)
        };
        if count == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "volume {name} is still mounted by {count} container(s); stop every container using it (`docker ps --filter volume={name}`) and restore again — nothing was changed"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Restore one volume: extract into a staging directory next to its data, swap it in, delete the old content.
fn restore_volume(
    ctx: &Ctx,
    dir: &Path,
    v: &PlannedVolume,
    entry: &FileEntry,
    target: &Path,
    progress: Option<&ItemProgress>,
) -> Result<String, String> {
    let store = Store::new(ctx.layout.clone());
    let lock_path = ctx.layout.snapshot_lock(&v.name);
    let _snap = FileLock::acquire(&lock_path, LockKind::Exclusive)
        .map_err(|e| format!("cannot take {}: {e}", lock_path.display()))?;
    let mut nested_locks = Vec::new();
    for n in &v.nested {
        let p = ctx.layout.snapshot_lock(n);
        nested_locks.push(
            FileLock::acquire(&p, LockKind::Exclusive)
                .map_err(|e| format!("cannot take {}: {e}", p.display()))?,
        );
    }
    for n in std::iter::once(&v.name).chain(v.nested.iter()) {
        wait_unmounted(&store, n)?;
    }
    // Every other volume sharing the tree (a parent around it, another volume on the same
    // device=): kept from mounting while the tree is swapped, refused if in use.
    let _family_locks = match store.load(&v.name) {
        Ok(Some(rec)) => {
            let data = rec
                .data
                .open(&ctx.layout, &ctx.view, Missing::Refuse)
                .map_err(|e| format!("volume {}: {e}", v.name))?
                .dir;
            let shown = rec.data.local_path(&ctx.layout, &ctx.view);
            let fam = topology::family(&ctx.layout, &ctx.view, &data, &shown);
            let mut others = fam.clone();
            others.members.retain(|m| !v.nested.contains(&m.name));
            let locks = topology::lock_members(&ctx.layout, &others, &v.name, UNMOUNT_WAIT)?;
            let mut fam = topology::family(&ctx.layout, &ctx.view, &data, &shown);
            crate::ops::volref::name_users(&mut fam, &ctx.docker_url, &v.name);
            if let Some(refusal) = fam.refusal(&v.name, &format!("restore volume {}", v.name)) {
                return Err(refusal);
            }
            locks
        }
        _ => Vec::new(),
    };
    let path = dir.join(&v.file);
    let f = File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // Staging, swap and cleanup through the parent's descriptor (see SwapTarget).
    let swap = match store.load(&v.name) {
        Ok(Some(rec)) => SwapTarget::of(&rec.data, &ctx.layout, &ctx.view),
        _ => SwapTarget::by_path(target),
    }
    .map_err(|e| e.to_string())?;
    // A restore killed midway left its staging directory (marked by its name) beside the data.
    remove_stale_staging(&swap);
    let (stage, stage_dir) = staging_dir(&swap).map_err(|e| e.to_string())?;
    let item = format!("restore {}", v.name);
    let tick = |n: u64| {
        if let Some(p) = progress {
            p(&item, Some(n))
        }
    };
    let result = archive::extract(
        Counting::new(f, Some(&tick)),
        &stage_dir.proc_path(),
        &ExtractOptions::default(),
    )
    .map_err(|e| format!("{}: {e}; nothing was changed", path.display()))
    .and_then(|r| {
        crash_point("restore.staged");
        verify::check_sum(dir, entry, &r.sha256)
            .map_err(|e| format!("{e}; nothing was changed"))?;
        swap_in(&swap, &stage).map_err(|e| e.to_string())?;
        crash_point("restore.swapped");
        Ok(r)
    });
    if let Some(p) = progress {
        p(&item, None);
    }
    drop(stage_dir);
    remove_staged(&swap, &stage);
    let r = result?;
    crate::core::spool::request_measure(&ctx.layout, &v.name);
    Ok(format!(
        "{} entries, {} bytes restored into {}",
        r.entries,
        r.bytes,
        target.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::Producer;
    use std::io::Write;

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

    #[test]
    fn psql_errors_name_their_line() {
        assert_eq!(
            psql_line("psql:<stdin>:24: ERROR:  current user cannot be dropped"),
            Some(24)
        );
        assert_eq!(psql_line("psql:/tmp/x.sql:7: FATAL:  boom"), Some(7));
        assert_eq!(psql_line("ERROR:  no line"), None);
        assert_eq!(psql_line("psql: error: connection failed"), None);
    }

    #[test]
    fn the_failing_statement_is_read_back_from_the_dump() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("db.sql.gz");
        let sql = "SET x = 1;\n--\n-- Name: t; Type: TABLE; Schema: public\n--\n\nCREATE TABLE public.t (\n    id integer NOT NULL\n);\nDROP ROLE IF EXISTS postgres;\nCOPY public.t (id) FROM stdin;\n1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n\\.\n";
        let mut gz = flate2::write::GzEncoder::new(
            File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        gz.write_all(sql.as_bytes()).unwrap();
        gz.finish().unwrap();
        let got = statements_at(&path, &[8, 9, 21]);
        assert_eq!(
            got[&8], "CREATE TABLE public.t ( id integer NOT NULL );",
            "comments and blank lines are left out"
        );
        assert_eq!(got[&9], "DROP ROLE IF EXISTS postgres;");
        assert_eq!(got[&21], "11", "deep in COPY data: the line alone");
        assert!(statements_at(&path, &[]).is_empty());
    }
}
