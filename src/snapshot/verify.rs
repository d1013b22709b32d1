//! Verifying snapshots: checksums against the manifests, and a full test-read of every archive of the chain.

use std::fs::File;
use std::io::BufReader;

use crate::archive::{self, ExtractOptions};
use crate::core::layout::Layout;
use crate::snapshot::manifest::Manifest;
use crate::snapshot::restore::{archive_path, check_checksums};
use crate::snapshot::{Counting, SnapshotError};

/// What was checked.
#[derive(Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    pub archives: usize,
    pub entries: u64,
    pub bytes: u64,
}

/// Check the checksums of a chain, then read every archive to the end without writing anything.
pub fn verify_chain(
    layout: &Layout,
    chain: &[Manifest],
    progress: Option<&(dyn Fn(u64) + Send + Sync)>,
) -> Result<VerifyReport, SnapshotError> {
    check_checksums(layout, chain)?;
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
        let r = archive::extract(
            BufReader::with_capacity(1 << 20, Counting::new(f, progress)),
            scratch.path(),
            &opts,
        )
        .map_err(|e| SnapshotError::Corrupt(format!("{}: {e}", p.display())))?;
        report.archives += 1;
        report.entries += r.entries;
        report.bytes += r.bytes;
    }
    Ok(report)
}
