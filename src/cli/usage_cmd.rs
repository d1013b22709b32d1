//! `allspark usage [--json]`: measure every volume, refresh the figures `docker volume inspect` shows, and print a table or the JSON report.
//!
//! `--json` prints one object (field names are stable, see `usage::Report`,
//! `usage::VolumeUsage` and `usage::FilesystemUsage`):
//!
//! ```text
//! {"measured_at": RFC 3339, "threshold_percent": 80.0,
//!  "volumes": [{"name", "path", "bytes", "apparent_bytes", "files", "dirs",
//!               "capacity", "capacity_enforced", "pool", "percent", "class",
//!               "backup", "snapshots",
//!               "snapshot_bytes", "last_snapshot", "last_snapshot_at",
//!               "mounted", "alert", "measured_at", "error"}],
//!  "filesystems": [{"mount", "total_bytes", "used_bytes", "available_bytes",
//!                   "percent", "volumes", "alert"}],
//!  "record_errors": ["..."]}
//! ```
//!
//! The table marks with `!` every volume at or above the threshold of its `size`
//! (shown `=50G` when the size is an enforced limit, a btrfs qgroup on a btrfs pool),
//! and every filesystem at or above the threshold. Exit status 0 when the
//! report was printed (alerts included); 1 if a volume record could not be read
//! (as `allspark volume ls`), after printing what could be measured.

use clap::Args;

use super::output::human;
use super::Cli;
use crate::core::layout::{HostView, Layout};
use crate::usage::{self, Report, ReportOptions};

#[derive(Args, Debug)]
pub struct UsageArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Alert threshold, percent of a volume's size or of a filesystem.
    #[arg(long, default_value_t = usage::DEFAULT_THRESHOLD_PERCENT, value_parser = parse_percent)]
    pub threshold: f64,
}

fn parse_percent(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
        _ => Err(format!(
            "{s:?} is not a percentage; use a number above 0 and at most 100, e.g. 80"
        )),
    }
}

pub(super) fn run(cli: &Cli, args: &UsageArgs) -> anyhow::Result<()> {
    let layout = Layout::new(&cli.root);
    if !layout.state_dir().is_dir() {
        anyhow::bail!(
            "no volumes under {} (no {}); check --root / ALLSPARK_ROOT",
            layout.root.display(),
            layout.state_dir().display()
        );
    }
    let view = HostView::new(cli.host_prefix.as_deref());
    let opts = ReportOptions {
        threshold_percent: args.threshold,
        ..ReportOptions::default()
    };
    let report = usage::measure_report(&layout, &view, &opts);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    if !report.record_errors.is_empty() {
        for e in &report.record_errors {
            eprintln!("allspark: {e}");
        }
        anyhow::bail!(
            "{} volume record(s) could not be read (see above)",
            report.record_errors.len()
        );
    }
    Ok(())
}

/// The human-readable report: the volumes, then the filesystems holding them, then what `!` means.
pub(super) fn table(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    volume_rows(&mut out, r);
    if !r.filesystems.is_empty() {
        let _ = writeln!(out);
        filesystem_rows(&mut out, r);
    }
    if r.volumes.iter().any(|v| v.alert) || r.filesystems.iter().any(|f| f.alert) {
        let _ = writeln!(
            out,
            "\n! at or above {}% of the volume's size or of the filesystem",
            r.threshold_percent
        );
    }
    out
}

/// One line per volume (and its measuring error, if any) under a header.
fn volume_rows(out: &mut String, r: &Report) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "  {:<28} {:>8} {:>8} {:>6} {:>9} {:<9} {:<7} {:>5} {:>8}  {:<20} {:>7}",
        "VOLUME",
        "USED",
        "SIZE",
        "USE%",
        "FILES",
        "CLASS",
        "BACKUP",
        "SNAPS",
        "SNAPSIZE",
        "LAST SNAPSHOT",
        "MOUNTED"
    );
    for v in &r.volumes {
        let mark = if v.alert { "!" } else { " " };
        let (used, files) = if v.error.is_some() {
            ("?".to_string(), "?".to_string())
        } else {
            (human(v.bytes), v.files.to_string())
        };
        let _ = writeln!(
            out,
            "{mark} {:<28} {:>8} {:>8} {:>6} {:>9} {:<9} {:<7} {:>5} {:>8}  {:<20} {:>7}",
            v.name,
            used,
            v.capacity
                // `=`: a limit writes cannot pass (btrfs qgroup); otherwise only reported against.
                .map(|c| format!("{}{}", if v.capacity_enforced { "=" } else { "" }, human(c)))
                .unwrap_or_else(|| "-".into()),
            v.percent
                .map(|p| format!("{p:.1}%"))
                .unwrap_or_else(|| "-".into()),
            files,
            v.class.as_str().to_string(),
            v.backup.as_str().to_string(),
            v.snapshots,
            human(v.snapshot_bytes),
            v.last_snapshot_at
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_else(|| "-".into()),
            v.mounted
        );
        if let Some(e) = &v.error {
            let _ = writeln!(out, "    error: {e}");
        }
    }
}

/// One line per filesystem holding volumes, under a header.
fn filesystem_rows(out: &mut String, r: &Report) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "  {:<40} {:>8} {:>8} {:>8} {:>6}  VOLUMES",
        "FILESYSTEM", "SIZE", "USED", "AVAIL", "USE%"
    );
    for f in &r.filesystems {
        let _ = writeln!(
            out,
            "{} {:<40} {:>8} {:>8} {:>8} {:>6}  {}",
            if f.alert { "!" } else { " " },
            f.mount.display(),
            human(f.total_bytes),
            human(f.used_bytes),
            human(f.available_bytes),
            format!("{:.1}%", f.percent),
            f.volumes.join(",")
        );
    }
}
