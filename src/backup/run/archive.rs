//! One volume archived into the backup directory: read through a descriptor that follows no symlink, under the volume's shared snapshot lock, written to a `.partial` file and moved into place, with its manifest entry.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::RunOptions;
use crate::archive::{self, CompressOptions, CompressStats, WriteOptions, WriteReport};
use crate::backup::manifest::{FileEntry, FileKind};
use crate::context::Ctx;
use crate::core::names::VolumeName;
use crate::core::options::Compression;
use crate::core::store::VolumeRecord;
use crate::fs::beneath::Missing;
use crate::fs::durable::{FileLock, LockKind};
use crate::pool::location::Locate;

/// Archive volume `rec` into `dir`: its file entry, and a warning when entries could not be read.
pub(super) fn archive_volume(
    ctx: &Ctx,
    rec: &VolumeRecord,
    dir: &Path,
    opts: &RunOptions,
) -> Result<(FileEntry, Option<String>), String> {
    let name = &rec.name;
    // Read through a descriptor opened without following symlinks (a `parent=` child swapped
    // for a link to a host directory is refused, not archived).
    let data = rec
        .data
        .open(&ctx.layout, &ctx.view, Missing::Refuse)
        .map_err(|e| {
            format!(
                "volume {name}: its data directory cannot be read safely ({e}); the volume is not in the backup (check `allspark volume inspect {name}`)"
            )
        })?
        .dir;
    let src = data.proc_path();
    let lock_path = ctx.layout.snapshot_lock(name);
    let _snap = FileLock::acquire(&lock_path, LockKind::Shared)
        .map_err(|e| format!("volume {name}: cannot take {}: {e}", lock_path.display()))?;
    let compression = rec.spec.compression.unwrap_or(ctx.compression);
    let file = format!("{name}.{}", compression.archive_suffix());
    let tmp = dir.join(format!(".{file}.partial"));
    let (r, stats) = write_partial(name, &src, &tmp, compression, opts)?;
    fs::rename(&tmp, dir.join(&file))
        .map_err(|e| format!("volume {name}: cannot move the archive into place: {e}"))?;
    let warning = (r.unreadable > 0).then(|| {
        format!(
            "volume {name}: {} entries could not be read and are missing from {file} (first: {}); fix their permissions and run the backup again",
            r.unreadable,
            r.problems.first().cloned().unwrap_or_default()
        )
    });
    if r.vanished + r.changed_during_walk > 0 {
        tracing::info!(volume = %name, vanished = r.vanished, changed = r.changed_during_walk, "files changed while the volume was archived (live data)");
    }
    Ok((
        FileEntry {
            name: file,
            kind: FileKind::Volume,
            size: stats.bytes_out,
            sha256: stats.sha256,
            source: name.to_string(),
            options: rec.options.clone(),
            bytes_in: r.bytes_in,
            compression,
            covers: Vec::new(),
            producer: None,
        },
        warning,
    ))
}

/// Write the archive of `src` into the new file `tmp` (removed again on failure), reporting progress.
fn write_partial(
    name: &VolumeName,
    src: &Path,
    tmp: &Path,
    compression: Compression,
    opts: &RunOptions,
) -> Result<(WriteReport, CompressStats), String> {
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(|e| format!("volume {name}: cannot create {}: {e}", tmp.display()))?;
    let item = format!("volume {name}");
    let progress = opts.progress.clone().map(|p| {
        let item = item.clone();
        Box::new(move |n: u64| p(&item, Some(n))) as archive::ProgressFn
    });
    let wopts = WriteOptions {
        progress,
        compression: CompressOptions::new(compression),
        ..Default::default()
    };
    tracing::info!(volume = %name, source = %src.display(), %compression, "archiving volume");
    let result = archive::write_archive(src, out, &wopts);
    if let Some(p) = &opts.progress {
        p(&item, None);
    }
    let r = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_file(tmp);
            return Err(format!("volume {name}: {e}"));
        }
    };
    let Some(stats) = r.compressed.clone() else {
        let _ = fs::remove_file(tmp);
        return Err(format!(
            "volume {name}: the archive has no checksum (internal error)"
        ));
    };
    Ok((r, stats))
}
