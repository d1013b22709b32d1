//! `allspark snapshot create|archive|ls|verify|restore|rm|prune`.

use anyhow::bail;
use clap::Subcommand;

use super::output::{archive_kind, print_archive};
use super::progress::bytes_bar;
use crate::context::Ctx;
use crate::core::names::VolumeName;
use crate::core::snapshot_id::SnapshotId;
use crate::ops::snapshot as snapshot_ops;
use crate::snapshot::{catalog, retention, verify, CreateOutcome, Manifest, Trigger};

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Snapshot a volume now (incremental to its last snapshot); prints the new id.
    Create {
        volume: VolumeName,
        /// Write a full snapshot instead of an incremental one.
        #[arg(long)]
        full: bool,
        /// On a btrfs pool: take the read-only snapshot only, and leave its archive to the
        /// agent (by default the archive is written right after, without blocking mounts).
        #[arg(long)]
        no_archive: bool,
    },
    /// On a btrfs pool: write the archives of the volume's read-only snapshots that have none
    /// yet, now (the agent does it in the background; a volume is not removed before).
    Archive { volume: VolumeName },
    /// List snapshots (of one volume, or of all), oldest first.
    Ls {
        volume: Option<VolumeName>,
        #[arg(long)]
        json: bool,
    },
    /// Check checksums and test-read archives (one snapshot's chain, or every snapshot).
    Verify {
        volume: VolumeName,
        id: Option<SnapshotId>,
    },
    /// Restore a snapshot over the volume (refused while mounted), or into a new volume.
    Restore {
        volume: VolumeName,
        id: SnapshotId,
        /// Restore into this new volume instead of over the source.
        #[arg(long)]
        into: Option<VolumeName>,
        /// Confirm that the volume's current content is replaced.
        #[arg(long)]
        yes: bool,
    },
    /// Delete one snapshot (refused while a later snapshot needs it).
    Rm { volume: VolumeName, id: SnapshotId },
    /// Apply the volume's retention (`keep=`) now.
    Prune { volume: VolumeName },
}

pub(super) fn run(ctx: &Ctx, cmd: &SnapshotCmd) -> anyhow::Result<()> {
    match cmd {
        SnapshotCmd::Create {
            volume,
            full,
            no_archive,
        } => create(ctx, volume, *full, *no_archive),
        SnapshotCmd::Archive { volume } => archive(ctx, volume),
        SnapshotCmd::Ls { volume, json } => ls(ctx, volume.as_ref(), *json),
        SnapshotCmd::Verify { volume, id } => verify(ctx, volume, id.as_ref()),
        SnapshotCmd::Restore {
            volume,
            id,
            into,
            yes,
        } => restore(ctx, volume, id, into.as_ref(), *yes),
        SnapshotCmd::Rm { volume, id } => rm(ctx, volume, id),
        SnapshotCmd::Prune { volume } => prune(ctx, volume),
    }
}

/// `snapshot create`: an archive, or on a btrfs pool a read-only snapshot (then its archive unless `no_archive`).
fn create(ctx: &Ctx, volume: &VolumeName, full: bool, no_archive: bool) -> anyhow::Result<()> {
    let bar = bytes_bar(None, &format!("snapshot {volume}"));
    let tick = bar.clone().map(|b| {
        std::sync::Arc::new(move |n: u64| b.set_position(n)) as crate::snapshot::create::Progress
    });
    let out = snapshot_ops::take(ctx, volume, Trigger::Manual, None, full, tick)?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    match out {
        CreateOutcome::Created(m) | CreateOutcome::AlreadyDone(m) => {
            print_archive("snapshot", &m);
            println!("{}", m.id);
        }
        CreateOutcome::Cow(c) => {
            eprintln!(
                "snapshot {} of {}: read-only btrfs snapshot in pool {}, {} ms",
                c.id, volume, c.pool, c.duration_ms
            );
            println!("{}", c.id);
            if !no_archive {
                archive_pending(ctx, volume)?;
            }
        }
        CreateOutcome::Skipped(why) => bail!("no snapshot taken: {why}"),
    }
    Ok(())
}

/// `snapshot ls`: archives and read-only snapshots of one volume or all, as a table or JSON.
fn ls(ctx: &Ctx, volume: Option<&VolumeName>, json: bool) -> anyhow::Result<()> {
    let volumes = match volume {
        Some(v) => vec![v.clone()],
        None => catalog::volumes(&ctx.layout),
    };
    let mut all = Vec::new();
    for v in &volumes {
        all.extend(crate::pool::cow::listing(&ctx.layout, &ctx.view, v)?);
    }
    if json {
        let rows: Vec<serde_json::Value> = all.iter().map(|l| l.to_json()).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<24} {:<9} {:<11} {:<11} {:>8} {:>12} {:>12}",
        "VOLUME", "ID", "TRIGGER", "KIND", "ARCHIVE", "FILES", "BYTES IN", "STORED"
    );
    for l in &all {
        let (volume, trigger) = match (&l.manifest, &l.cow) {
            (Some(m), _) => (m.volume.clone(), m.trigger),
            (None, Some(c)) => (c.volume.clone(), c.trigger),
            (None, None) => continue,
        };
        let (archive, files, bytes_in, stored) = match &l.manifest {
            Some(m) => (
                archive_kind(m),
                m.files.to_string(),
                m.bytes_in.to_string(),
                m.bytes_stored.to_string(),
            ),
            None => ("pending", "-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:<24} {:<24} {:<9} {:<11} {:<11} {:>8} {:>12} {:>12}",
            volume,
            l.id(),
            trigger.as_str(),
            l.kind,
            archive,
            files,
            bytes_in,
            stored
        );
    }
    Ok(())
}

/// `snapshot verify`: one snapshot's chain, or every snapshot of the volume.
fn verify(ctx: &Ctx, volume: &VolumeName, id: Option<&SnapshotId>) -> anyhow::Result<()> {
    let all = catalog::list(&ctx.layout, volume)?;
    let targets: Vec<Manifest> = match id {
        Some(id) => catalog::chain(&all, &catalog::get(&ctx.layout, volume, id)?.id)?,
        None => {
            for m in &all {
                catalog::chain(&all, &m.id)?;
            }
            all.clone()
        }
    };
    if targets.is_empty() {
        bail!("volume {volume} has no snapshots to verify");
    }
    let total = targets.iter().map(|m| m.bytes_in).sum();
    let bar = bytes_bar(Some(total), &format!("verify {volume}"));
    let tick = |n: u64| {
        if let Some(b) = &bar {
            b.set_position(n)
        }
    };
    let r = verify::verify_chain(&ctx.layout, &targets, Some(&tick))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    println!(
        "ok: {} archive(s), {} entries, {} bytes verified",
        r.archives, r.entries, r.bytes
    );
    Ok(())
}

/// `snapshot restore`: over the volume (only with `yes`), or `into` a new volume.
fn restore(
    ctx: &Ctx,
    volume: &VolumeName,
    id: &SnapshotId,
    into: Option<&VolumeName>,
    yes: bool,
) -> anyhow::Result<()> {
    let created_at = match catalog::get(&ctx.layout, volume, id) {
        Ok(m) => m.created_at,
        Err(e) => match crate::pool::cow::listing(&ctx.layout, &ctx.view, volume)?
            .into_iter()
            .find_map(|l| l.cow.filter(|c| c.id == id.as_str()))
        {
            Some(c) => c.created_at,
            None => return Err(e.into()),
        },
    };
    if into.is_none() && !yes {
        bail!(
            "this replaces the whole content of volume {volume} with snapshot {id} (taken {}); run again with --yes to do it, or use --into NEW",
            created_at.to_rfc3339()
        );
    }
    let bar = bytes_bar(None, &format!("restore {volume}@{id}"));
    let tick = |n: u64| {
        if let Some(b) = &bar {
            b.set_position(n)
        }
    };
    let r = match into {
        Some(new) => snapshot_ops::restore_into_new(ctx, volume, id, new, Some(&tick))?,
        None => snapshot_ops::restore_over(ctx, volume, id, Some(&tick))?,
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let target = into.unwrap_or(volume);
    if r.cow {
        println!(
            "restored {volume}@{id} into {target}: a writable btrfs snapshot swapped in (nothing copied)"
        );
    } else {
        println!(
            "restored {volume}@{id} into {target}: {} archive(s), {} entries, {} bytes",
            r.archives, r.entries, r.bytes
        );
    }
    Ok(())
}

/// `snapshot rm`: one archive (refused while a later one builds on it) and its read-only snapshot.
fn rm(ctx: &Ctx, volume: &VolumeName, id: &SnapshotId) -> anyhow::Result<()> {
    let _archiving = crate::fs::durable::FileLock::acquire(
        &ctx.layout.archive_lock(volume),
        crate::fs::durable::LockKind::Exclusive,
    )?;
    let _lock = crate::fs::durable::FileLock::acquire(
        &ctx.layout.snapshot_lock(volume),
        crate::fs::durable::LockKind::Exclusive,
    )?;
    let rec = crate::core::store::Store::new(ctx.layout.clone()).load(volume)?;
    let archived = catalog::get(&ctx.layout, volume, id);
    if archived.is_err() {
        // A read-only snapshot without an archive.
        if let Some(rec) = &rec {
            if crate::pool::cow::remove(&ctx.layout, &ctx.view, rec, id)? {
                println!("removed {volume}@{id}");
                return Ok(());
            }
        }
    }
    archived?;
    let all = catalog::list(&ctx.layout, volume)?;
    let children: Vec<&str> = all
        .iter()
        .filter(|m| m.parent.as_deref() == Some(id))
        .map(|m| m.id.as_str())
        .collect();
    if !children.is_empty() {
        bail!("snapshot {id} is the parent of {}; remove those first (newest first), or use `allspark snapshot prune {volume}`", children.join(", "));
    }
    catalog::remove_dir(&ctx.layout, volume, id)?;
    if let Some(rec) = &rec {
        crate::pool::cow::remove(&ctx.layout, &ctx.view, rec, id)?;
    }
    println!("removed {volume}@{id}");
    Ok(())
}

/// `snapshot prune`: the volume's `keep=` over its archives and its read-only snapshots.
fn prune(ctx: &Ctx, volume: &VolumeName) -> anyhow::Result<()> {
    let vref = crate::ops::volref::resolve(&ctx.layout, &ctx.view, &ctx.docker_url, volume)
        .ok()
        .map(|v| snapshot_ops::keep_of(&v))
        .unwrap_or_default();
    let mut removed = {
        // An archiver writes incrementals on the newest archive: not while pruning.
        let _archiving = crate::fs::durable::FileLock::acquire(
            &ctx.layout.archive_lock(volume),
            crate::fs::durable::LockKind::Exclusive,
        )?;
        retention::prune(&ctx.layout, volume, &vref)?
    };
    if let Some(rec) = crate::core::store::Store::new(ctx.layout.clone()).load(volume)? {
        removed.extend(crate::pool::cow::prune(
            &ctx.layout,
            &ctx.view,
            &rec,
            &vref,
        )?);
        removed.sort();
        removed.dedup();
    }
    println!(
        "removed {} snapshot(s){}",
        removed.len(),
        if removed.is_empty() {
            String::new()
        } else {
            format!(": {}", removed.join(", "))
        }
    );
    Ok(())
}

/// `snapshot archive`: write the archives read-only snapshots still lack.
fn archive(ctx: &Ctx, volume: &VolumeName) -> anyhow::Result<()> {
    if archive_pending(ctx, volume)? == 0 {
        eprintln!("{volume}: every read-only snapshot has its archive");
    }
    Ok(())
}

/// Archive `volume`'s read-only snapshots that have none yet (waiting for the agent's run if
/// one is under way); how many were written.
fn archive_pending(ctx: &Ctx, volume: &VolumeName) -> anyhow::Result<usize> {
    let done = crate::pool::archive::catch_up(ctx, volume, true)?;
    for m in &done {
        print_archive("archive", m);
    }
    Ok(done.len())
}
