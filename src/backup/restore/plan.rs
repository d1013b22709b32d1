//! Planning a restore (nothing is changed): the request checked against the manifest, each volume's target and nested volumes, each dump's restore container, and the running containers to stop.

use anyhow::bail;

use super::{PlannedDump, PlannedVolume, RestorePlan, RestoreRequest};
use crate::backup::feed::{chosen_hook, select_hook, take_hook};
use crate::backup::manifest::{self, BackupManifest, FileKind};
use crate::backup::run::{dump_name, running_containers};
use crate::backup::{Settings, LABEL_RESTORE};
use crate::context::Ctx;
use crate::core::names::VolumeName;
use crate::core::store::Store;
use crate::docker::ContainerInfo;
use crate::pool::location::Locate;

/// What Docker says for a plan: the running users of the volumes, the running containers (of
/// the label filter), and every container (only when `--database NAME=CONTAINER` names some).
type DockerView = (Vec<ContainerInfo>, Vec<ContainerInfo>, Vec<ContainerInfo>);

/// Work out what restoring `req` means now (nothing is changed).
pub(crate) fn plan(
    ctx: &Ctx,
    settings: &Settings,
    req: &RestoreRequest,
) -> anyhow::Result<RestorePlan> {
    let m = manifest::read_required(&req.dir)?;
    check_request(&m, req)?;
    let all = req.volumes.is_empty() && req.databases.is_empty();
    let mut problems = Vec::new();
    let volumes = planned_volumes(ctx, &m, req, all, &mut problems);
    let mut dumps = planned_dumps(&m, req, all);

    let mut to_stop: Vec<ContainerInfo> = Vec::new();
    match docker_view(ctx, settings, req, &volumes) {
        Ok((users, running, everyone)) => {
            for u in users {
                if !to_stop.iter().any(|c| c.id == u.id) {
                    to_stop.push(u);
                }
            }
            choose_hooks(&mut dumps, req, &running, &everyone, &mut problems);
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

/// Refuse a backup of the old script, a volume a dump stands for, and names the backup does not hold.
fn check_request(m: &BackupManifest, req: &RestoreRequest) -> anyhow::Result<()> {
    if m.files.is_empty() && m.outcome.is_none() {
        bail!(
            "{} was made by the old backup script (no checksums, old file names): restore it with tar as before, or take a new backup with `allspark backup run`",
            req.dir.display()
        );
    }
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
    Ok(())
}

/// The volumes to restore, each with its data directory here (a missing one is a problem) and the volumes nested in it.
fn planned_volumes(
    ctx: &Ctx,
    m: &BackupManifest,
    req: &RestoreRequest,
    all: bool,
    problems: &mut Vec<String>,
) -> Vec<PlannedVolume> {
    let store = Store::new(ctx.layout.clone());
    let records = store.all().map(|(ok, _)| ok).unwrap_or_default();
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
        let nested = crate::backup::run::with_descendants(&records, &name)
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
    volumes
}

/// The dumps to restore, no container chosen yet.
fn planned_dumps(m: &BackupManifest, req: &RestoreRequest, all: bool) -> Vec<PlannedDump> {
    m.files
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
        .collect()
}

/// Ask Docker for the containers a plan needs (see [`DockerView`]).
fn docker_view(
    ctx: &Ctx,
    settings: &Settings,
    req: &RestoreRequest,
    volumes: &[PlannedVolume],
) -> anyhow::Result<DockerView> {
    crate::docker::block_on(async {
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
    .and_then(|r| r)
}

/// Give each dump its restore container: the `--database` override, else the one running
/// container labelled for it that [`select_hook`] accepts; anything else is a problem.
fn choose_hooks(
    dumps: &mut [PlannedDump],
    req: &RestoreRequest,
    running: &[ContainerInfo],
    everyone: &[ContainerInfo],
    problems: &mut Vec<String>,
) {
    for d in dumps {
        if let Some(target) = req.targets.get(&d.name) {
            match chosen_hook(&d.name, target, everyone) {
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
