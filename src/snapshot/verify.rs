//! Verifying snapshots: a full test-read of every archive of the chain, hashed on the way and checked against its manifest.

use crate::core::layout::Layout;
use crate::snapshot::manifest::Manifest;
use crate::snapshot::restore::extract_checked;
use crate::snapshot::SnapshotError;

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
        let r = extract_checked(layout, m, scratch.path(), true, progress)?;
        report.archives += 1;
        report.entries += r.entries;
        report.bytes += r.bytes;
    }
    Ok(report)
}
