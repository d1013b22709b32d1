//! How the CLI shows values and shared report lines: one size formatter, one line format per item kind.

use crate::backup::restore::ItemResult;
use crate::backup::retention::Decision;
use crate::snapshot::Manifest;

/// Binary units with one decimal, in the syntax `size=` accepts: `512B`, `1.5K`, `20.0G`.
pub(super) fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["K", "M", "G", "T", "P", "E"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1}{}", UNITS[u])
}

/// `ok` or `FAILED`, padded to one column.
pub(super) fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "FAILED"
    }
}

/// One line per restored volume or dump (`backup restore`, `dr restore`).
pub(super) fn print_items(items: &[ItemResult]) {
    for i in items {
        println!("{:<6} {} {}: {}", verdict(i.ok), i.kind, i.name, i.detail);
    }
}

/// One line per backup a retention run removed (or, with `dry_run`, would remove).
pub(super) fn print_removals(decisions: &[Decision], dry_run: bool) {
    for d in decisions.iter().filter(|d| d.delete) {
        println!(
            "{} {}/{}: {}",
            if dry_run { "would remove" } else { "removed" },
            d.kind,
            d.name,
            d.reason
        );
    }
}

/// A prune's outcome as both `prune` commands print it: each removal, each error, the counts;
/// then an error saying how many could not be removed. `what` is e.g. "backup".
pub(super) fn report_prune(
    what: &str,
    decisions: &[Decision],
    (removed, kept): (usize, usize),
    errors: &[String],
    dry_run: bool,
) -> anyhow::Result<()> {
    print_removals(decisions, dry_run);
    for e in errors {
        eprintln!("error: {e}");
    }
    println!(
        "{removed} {what}(s) {}, {kept} kept",
        if dry_run { "to remove" } else { "removed" },
    );
    if !errors.is_empty() {
        anyhow::bail!("{} old {what}(s) could not be removed", errors.len());
    }
    Ok(())
}

/// `full` or `incremental`: how a snapshot archive stands in its chain.
pub(super) fn archive_kind(m: &Manifest) -> &'static str {
    if m.is_full() {
        "full"
    } else {
        "incremental"
    }
}

/// What one snapshot archive holds (`snapshot create`): `what` is `snapshot` or `archive`.
pub(super) fn print_archive(what: &str, m: &Manifest) {
    eprintln!(
        "{what} {} of {}: {} entries, {} bytes read, {} bytes stored ({}), {} ms",
        m.id,
        m.volume,
        m.files,
        m.bytes_in,
        m.bytes_stored,
        archive_kind(m),
        m.duration_ms
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0B");
        assert_eq!(human(1023), "1023B");
        assert_eq!(human(1536), "1.5K");
        assert_eq!(human(50 << 30), "50.0G");
    }
}
