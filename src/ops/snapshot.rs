//! Snapshot operations on named volumes, shared by the CLI and the agent: take (then prune), restore, restore into a new volume.

use std::collections::BTreeMap;

use anyhow::{bail, Context};

use crate::context::Ctx;
use crate::core::layout::Layout;
use crate::core::names::VolumeName;
use crate::core::options::{Compression, Keep};
use crate::core::store::{Store, VolumeRecord};
use crate::fs::beneath::Dir;
use crate::fs::durable::{FileLock, LockKind};
use crate::ops::volref::{self, VolumeRef};
use crate::pool::topology;

/// How long an operation waits for the snapshot locks of the volumes sharing its tree.
const FAMILY_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
use crate::plugin::driver::DriverSettings;
use crate::pool::location::Locate;
use crate::snapshot::create::DEFAULT_FULL_EVERY;
use crate::snapshot::{
    catalog, create, restore, retention, CreateOutcome, CreateRequest, Manifest, RestoreReport,
    Trigger,
};

/// Snapshot a volume now, then apply its retention.
pub fn take(
    ctx: &Ctx,
    name: &VolumeName,
    trigger: Trigger,
    event: Option<String>,
    force_full: bool,
    progress: Option<crate::snapshot::create::Progress>,
) -> anyhow::Result<CreateOutcome> {
    let vref = volref::resolve(&ctx.layout, &ctx.view, &ctx.docker_url, name)?;
    // A volume on a btrfs pool: a read-only snapshot now, its archive later.
    if let Some(rec) = &vref.record {
        let skip = matches!(trigger, Trigger::Unmount);
        if let Some(out) =
            crate::pool::cow::take(&ctx.layout, &ctx.view, rec, trigger, event.clone(), skip)?
        {
            return Ok(out);
        }
    }
    // Read through a descriptor opened without following symlinks.
    let data = vref.open(&ctx.layout, &ctx.view)?;
    let outcome = create(
        &ctx.layout,
        &CreateRequest {
            volume: name,
            source: &data.proc_path(),
            trigger,
            event,
            driver: Some(vref.driver.clone()),
            full_every: DEFAULT_FULL_EVERY,
            skip_if_mounted: matches!(trigger, Trigger::Unmount),
            force_full,
            compression: compression_of(ctx, &vref),
            progress,
        },
    )?;
    if let CreateOutcome::Created(_) = outcome {
        let keep = keep_of(&vref);
        let removed = retention::prune(&ctx.layout, name, &keep)?;
        if !removed.is_empty() {
            tracing::info!(
                volume = %name,
                removed = removed.len(),
                "old snapshots pruned"
            );
        }
    }
    Ok(outcome)
}

/// The codec of a volume's new chains and backups: its `compression=` option, else the setting.
pub fn compression_of(ctx: &Ctx, vref: &VolumeRef) -> Compression {
    vref.record
        .as_ref()
        .and_then(|r| r.spec.compression)
        .unwrap_or(ctx.compression)
}

/// The retention of a volume: its `keep=` option, or the default for foreign volumes.
pub fn keep_of(vref: &VolumeRef) -> Keep {
    vref.record
        .as_ref()
        .map(|r| r.spec.keep)
        .unwrap_or_default()
}

/// Restore snapshot `id` of `name` over the volume's data. Refused while the volume is mounted.
pub fn restore_over(
    ctx: &Ctx,
    name: &VolumeName,
    id: &str,
    progress: Option<&(dyn Fn(u64) + Send + Sync)>,
) -> anyhow::Result<RestoreReport> {
    // A read-only snapshot alone (its archive not written yet) restores too.
    let cow = crate::pool::cow::find_snapshot(&ctx.layout, &ctx.view, name, id)?.is_some();
    let chain = match catalog::get(&ctx.layout, name, id) {
        Ok(_) => catalog::chain(&catalog::list(&ctx.layout, name)?, id)?,
        Err(_) if cow => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let vref = volref::resolve(&ctx.layout, &ctx.view, &ctx.docker_url, name)?;
    let snap_lock = ctx.layout.snapshot_lock(name);
    let _snap = FileLock::acquire(&snap_lock, LockKind::Exclusive)
        .with_context(|| format!("cannot take {}", snap_lock.display()))?;
    refuse_if_in_use(ctx, &vref)?;
    // Every volume sharing the tree (children inside it, a parent around it, another volume
    // on the same device=): kept from mounting while the tree is swapped, refused if in use.
    let data = vref.open(&ctx.layout, &ctx.view)?;
    let fam = topology::family(&ctx.layout, &ctx.view, &data, &vref.dir);
    let _family_locks = topology::lock_members(&ctx.layout, &fam, name, FAMILY_LOCK_WAIT)
        .map_err(anyhow::Error::msg)?;
    let mut fam = topology::family(&ctx.layout, &ctx.view, &data, &vref.dir);
    fam.name_users(&ctx.docker_url, name);
    if let Some(refusal) = fam.refusal(name, &format!("restore volume {name}")) {
        bail!(refusal);
    }
    drop(data);
    if let Some(report) = crate::pool::restore::over(ctx, &vref, id, &chain, progress)? {
        return Ok(report);
    }
    let target = vref.swap_target(&ctx.layout, &ctx.view)?;
    restore::remove_stale_staging(&target);
    let report = restore::restore_chain_into(&ctx.layout, &chain, &target, progress)?;
    if vref.record.is_some() {
        crate::core::spool::request_measure(&ctx.layout, name);
    }
    Ok(report)
}

fn refuse_if_in_use(ctx: &Ctx, vref: &VolumeRef) -> anyhow::Result<()> {
    if vref.record.is_some() {
        let store = Store::new(ctx.layout.clone());
        let _lock = store.lock(&vref.name)?;
        let rec = store
            .load(&vref.name)?
            .with_context(|| format!("volume {} disappeared", vref.name))?;
        if rec.mount_count() > 0 {
            bail!(
                "volume {} is mounted by {} container(s); stop them before restoring (or restore into a new volume with --into)",
                vref.name,
                rec.mount_count()
            );
        }
    } else {
        let users = crate::docker::running_users(&ctx.docker_url, &vref.name)?;
        if !users.is_empty() {
            bail!(
                "volume {} is used by running container(s) {}; stop them before restoring",
                vref.name,
                users.join(", ")
            );
        }
    }
    Ok(())
}

/// Where the options of a removed volume are kept beside its snapshots.
fn removed_options_path(layout: &Layout, name: &VolumeName) -> std::path::PathBuf {
    layout.volume_snapshots(name).join("volume-options.json")
}

/// Keep a volume's Create options beside its snapshots before it is removed (`workspace
/// prune`), so `snapshot restore --into NAME` recreates it as it was.
pub fn save_removed_options(layout: &Layout, rec: &VolumeRecord) -> anyhow::Result<()> {
    let dir = layout.volume_snapshots(&rec.name);
    crate::fs::durable::ensure_dir(&dir, 0o700)?;
    let bytes = serde_json::to_vec_pretty(&rec.options)?;
    crate::fs::durable::atomic_write(&removed_options_path(layout, &rec.name), &bytes, 0o600)?;
    Ok(())
}

fn load_removed_options(layout: &Layout, name: &VolumeName) -> Option<BTreeMap<String, String>> {
    serde_json::from_slice(&std::fs::read(removed_options_path(layout, name)).ok()?).ok()
}

/// Restore snapshot `id` of `name` into a new allspark volume `new` (created with the source's options, without its device).
pub fn restore_into_new(
    ctx: &Ctx,
    name: &VolumeName,
    id: &str,
    new: &VolumeName,
    progress: Option<&(dyn Fn(u64) + Send + Sync)>,
) -> anyhow::Result<RestoreReport> {
    let cow = crate::pool::cow::find_snapshot(&ctx.layout, &ctx.view, name, id)?;
    let chain = match catalog::get(&ctx.layout, name, id) {
        Ok(_) => catalog::chain(&catalog::list(&ctx.layout, name)?, id)?,
        Err(_) if cow.is_some() => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let store = Store::new(ctx.layout.clone());
    if store.load(new)?.is_some() {
        bail!("volume {new} already exists; choose a new name for --into");
    }
    let opts = options_of_new(ctx, &store, name, new)?;
    let driver = crate::plugin::host_driver(
        ctx.layout.clone(),
        DriverSettings {
            mount_dir: ctx.layout.mounts_dir(),
            bind_roots: vec![ctx.layout.root.clone()],
            view: ctx.view.clone(),
            snapshot_wait: crate::core::layout::DEFAULT_SNAPSHOT_WAIT,
            protected: Vec::new(),
        },
    )?;
    // Into the same btrfs pool: a writable snapshot of the read-only one (nothing copied).
    if let Some((pool, _)) = &cow {
        if opts.get("pool") == Some(&pool.name) {
            let mut opts = opts.clone();
            opts.insert("template".into(), format!("snapshot:{name}@{id}"));
            driver.create(new, Some(&opts))?;
            return Ok(RestoreReport {
                cow: true,
                ..Default::default()
            });
        }
    }
    driver.create(new, Some(&opts))?;
    // Whatever fails from here on, no half-made volume `new` stays behind.
    let ro = cow.as_ref().map(|(_, ro)| ro);
    let filled = fill_new(ctx, &store, new, id, &chain, ro, progress);
    if filled.is_err() {
        let _ = driver.remove(new);
    }
    filled
}

/// The options of the new volume: the source's (a removed volume's, as `workspace prune` kept
/// them), without its place and first content; a volume recreated under its own name keeps its
/// parent, so a pruned project workspace comes back inside its parent.
fn options_of_new(
    ctx: &Ctx,
    store: &Store,
    name: &VolumeName,
    new: &VolumeName,
) -> anyhow::Result<BTreeMap<String, String>> {
    let source_opts = match store.load(name)? {
        Some(r) => r.options.clone(),
        None => load_removed_options(&ctx.layout, name).unwrap_or_default(),
    };
    Ok(source_opts
        .into_iter()
        .filter(|(k, _)| match k.as_str() {
            "device" | "type" | "template" => false,
            "parent" => new == name,
            _ => true,
        })
        .collect())
}

/// Fill the just-created volume `new` with snapshot `id`: a copy of its read-only snapshot `ro`
/// when no archive chain exists, else the chain (swapped in whole on a btrfs pool).
fn fill_new(
    ctx: &Ctx,
    store: &Store,
    new: &VolumeName,
    id: &str,
    chain: &[Manifest],
    ro: Option<&Dir>,
    progress: Option<&(dyn Fn(u64) + Send + Sync)>,
) -> anyhow::Result<RestoreReport> {
    let rec = store.load(new)?.context("the new volume disappeared")?;
    let report = match ro {
        // Only the read-only snapshot exists: copy it (another pool, or the default one).
        Some(ro) if chain.is_empty() => {
            let dest =
                rec.data
                    .open(&ctx.layout, &ctx.view, crate::fs::beneath::Missing::Refuse)?;
            crate::fs::copy::copy_tree(&ro.proc_path(), &dest.dir.proc_path())
                .map(|_| RestoreReport::default())
                .map_err(crate::snapshot::SnapshotError::from)
        }
        _ => {
            let target = restore::SwapTarget::of(&rec.data, &ctx.layout, &ctx.view)?;
            if let Some(r) = crate::pool::restore::over(
                ctx,
                &volref::resolve(&ctx.layout, &ctx.view, &ctx.docker_url, new)?,
                id,
                chain,
                progress,
            )? {
                Ok(r)
            } else {
                restore::restore_chain_into(&ctx.layout, chain, &target, progress)
            }
        }
    };
    Ok(report?)
}
