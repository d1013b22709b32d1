//! Verifying snapshots: a full test-read of every archive of the chain, hashed on the way and checked against its manifest.

use std::fs::File;

use crate::archive::{self, ExtractOptions};
use crate::core::layout::Layout;
use crate::snapshot::manifest::Manifest;
use crate::snapshot::restore::{archive_path, checksum_mismatch};
use crate::snapshot::{Counting, SnapshotError};

/// What was checked.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct VerifyReport {
    pub archives: usize,
    pub entries: u64,
    pub bytes: u64,
}

/// Read every archive of a chain to the end without writing anything (every member or
/// frame decoded and checked), and compare its sha256 with its manifest's.
pub(crate) fn verify_chain(
    layout: &Layout,
    chain: &[Manifest],
    progress: Option<&(dyn Fn(u64) + Send + Sync)>,
) -> Result<VerifyReport, SnapshotError> {
    let mut report = VerifyReport::default();
    let scratch = tempfile::tempdir()
        .map_err(|e| SnapshotError::io("cannot create a scratch directory", e))?;
    for m in chain {
        let p = archive_path(layout, m);
        let f = File::open(&p)
            .map_err(|e| SnapshotError::io(format!("cannot open {}", p.display()), e))?;
        let opts = ExtractOptions {
            verify_only: true,
            skip_devices: true,
            ..Default::default()
        };
        let r = archive::extract(Counting::new(f, progress), scratch.path(), &opts)
            .map_err(|e| SnapshotError::Corrupt(format!("{}: {e}", p.display())))?;
        if r.sha256 != m.sha256 {
            return Err(checksum_mismatch(&p, &r.sha256, m));
        }
        report.archives += 1;
        report.entries += r.entries;
        report.bytes += r.bytes;
    }
    Ok(report)
}
