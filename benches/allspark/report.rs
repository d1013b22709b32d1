//! Figures (median, min, max of several runs), ratios, targets, and the text / Markdown / JSON renderings.

use std::fmt::Write as _;

use serde_json::{json, Value};

/// How a figure's value is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Seconds, shown as s or ms.
    Secs,
    /// Microseconds of latency.
    Micros,
    /// Operations per second.
    PerSec,
    /// Bytes, shown as MB (10^6).
    Bytes,
    /// Kibibytes of memory (as /proc reports them), shown as MB (10^6 bytes).
    KiB,
}

impl Unit {
    pub fn name(self) -> &'static str {
        match self {
            Unit::Secs => "s",
            Unit::Micros => "us",
            Unit::PerSec => "ops/s",
            Unit::Bytes => "bytes",
            Unit::KiB => "KiB",
        }
    }

    /// A human rendering of one value.
    pub fn show(self, v: f64) -> String {
        match self {
            Unit::Secs if v < 1.0 => format!("{} ms", sig(v * 1e3)),
            Unit::Secs => format!("{} s", sig(v)),
            Unit::Micros if v >= 1000.0 => format!("{} ms", sig(v / 1e3)),
            Unit::Micros => format!("{} µs", sig(v)),
            Unit::PerSec => format!("{}/s", group(v.round() as u64)),
            Unit::Bytes => format!("{} MB", sig(v / 1e6)),
            Unit::KiB => format!("{} MB", sig(v * 1024.0 / 1e6)),
        }
    }
}

/// Three significant digits (at least the integer part).
fn sig(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// 12345 -> "12,345".
fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Median of the samples (the mean of the two middle ones for an even count).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

pub fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

pub fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// The `q` quantile (0..=1) of sorted samples, nearest rank.
pub fn quantile_sorted(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One figure: several runs of one measurement.
#[derive(Clone, Debug)]
pub struct Figure {
    /// Stable key for the JSON (`section.what`).
    pub key: String,
    pub label: String,
    pub unit: Unit,
    pub samples: Vec<f64>,
    /// A ratio to another figure of the same run: (label of the baseline, median ours / median theirs).
    pub ratio: Option<(String, f64)>,
    pub note: String,
}

impl Figure {
    pub fn median(&self) -> f64 {
        median(&self.samples)
    }
}

/// A group of figures.
#[derive(Clone, Debug)]
pub struct Section {
    pub title: String,
    pub figures: Vec<Figure>,
    /// Why the section did not run, if it did not.
    pub skipped: Option<String>,
    pub notes: Vec<String>,
}

impl Section {
    pub fn new(title: &str) -> Section {
        Section {
            title: title.to_string(),
            figures: Vec::new(),
            skipped: None,
            notes: Vec::new(),
        }
    }

    /// Add a figure; returns its index.
    pub fn add(&mut self, key: &str, label: &str, unit: Unit, samples: Vec<f64>) -> usize {
        self.figures.push(Figure {
            key: key.to_string(),
            label: label.to_string(),
            unit,
            samples,
            ratio: None,
            note: String::new(),
        });
        self.figures.len() - 1
    }

    pub fn get(&self, key: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.key == key)
    }

    /// Set the ratio of figure `ours` to figure `base` (ratio of medians); returns it.
    pub fn ratio(&mut self, ours: &str, base: &str) -> Option<f64> {
        let b = self.get(base)?;
        let (blabel, bmed) = (b.label.clone(), b.median());
        let f = self.figures.iter_mut().find(|f| f.key == ours)?;
        let r = f.median() / bmed;
        f.ratio = Some((blabel, r));
        Some(r)
    }
}

/// One target of the issue, met or not.
#[derive(Clone, Debug)]
pub struct Target {
    pub what: String,
    pub goal: String,
    pub measured: String,
    /// `None`: not measured (section skipped).
    pub met: Option<bool>,
}

/// Everything one run produced.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub mode: String,
    pub started: String,
    pub total_secs: f64,
    pub machine: Vec<(String, String)>,
    pub sections: Vec<Section>,
    pub targets: Vec<Target>,
    pub notes: Vec<String>,
}

impl Report {
    /// Plain text for the terminal.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "allspark benchmarks ({} mode, {}, {:.0} s)",
            self.mode, self.started, self.total_secs
        );
        for (k, v) in &self.machine {
            let _ = writeln!(s, "  {k:<16} {v}");
        }
        for sec in &self.sections {
            let _ = writeln!(s, "\n== {}", sec.title);
            if let Some(why) = &sec.skipped {
                let _ = writeln!(s, "  skipped: {why}");
                continue;
            }
            let _ = writeln!(
                s,
                "  {:<56} {:>12} {:>12} {:>12} {:>4}  ratio",
                "figure", "median", "min", "max", "runs"
            );
            for f in &sec.figures {
                let ratio = f
                    .ratio
                    .as_ref()
                    .map(|(b, r)| format!("{r:.3}x vs {b}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    s,
                    "  {:<56} {:>12} {:>12} {:>12} {:>4}  {}{}",
                    f.label,
                    f.unit.show(f.median()),
                    f.unit.show(min(&f.samples)),
                    f.unit.show(max(&f.samples)),
                    f.samples.len(),
                    ratio,
                    if f.note.is_empty() {
                        String::new()
                    } else {
                        format!("  ({})", f.note)
                    }
                );
            }
            for n in &sec.notes {
                let _ = writeln!(s, "  note: {n}");
            }
        }
        let _ = writeln!(s, "\n== Targets");
        for t in &self.targets {
            let _ = writeln!(
                s,
                "  {:<6} {:<64} goal {:<14} measured {}",
                mark(t.met, "MET", "MISSED", "--"),
                t.what,
                t.goal,
                t.measured
            );
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        s
    }

    /// The targets table alone (Markdown), for the README.
    pub fn targets_markdown(&self) -> String {
        let mut s = String::new();
        s.push_str("| target | goal | measured | |\n|---|---|---|---|\n");
        for t in &self.targets {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                t.what,
                t.goal,
                t.measured,
                mark(t.met, "✅ MET", "❌ MISSED", "—")
            );
        }
        s
    }

    /// The whole report (Markdown).
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Run: {} mode, started {}, {:.0} s in all.\n",
            self.mode, self.started, self.total_secs
        );
        s.push_str("| machine | |\n|---|---|\n");
        for (k, v) in &self.machine {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        s.push_str("\n### Targets\n\n");
        s.push_str(&self.targets_markdown());
        for sec in &self.sections {
            let _ = writeln!(s, "\n### {}\n", sec.title);
            if let Some(why) = &sec.skipped {
                let _ = writeln!(s, "Skipped: {why}");
                continue;
            }
            s.push_str("| figure | median | min | max | runs | ratio (medians) |\n");
            s.push_str("|---|--:|--:|--:|--:|---|\n");
            for f in &sec.figures {
                let ratio = f
                    .ratio
                    .as_ref()
                    .map(|(b, r)| format!("{r:.3}× {b}"))
                    .unwrap_or_default();
                let label = if f.note.is_empty() {
                    f.label.clone()
                } else {
                    format!("{} ({})", f.label, f.note)
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} |",
                    label,
                    f.unit.show(f.median()),
                    f.unit.show(min(&f.samples)),
                    f.unit.show(max(&f.samples)),
                    f.samples.len(),
                    ratio
                );
            }
            if !sec.notes.is_empty() {
                s.push('\n');
                for n in &sec.notes {
                    let _ = writeln!(s, "- {n}");
                }
            }
        }
        if !self.notes.is_empty() {
            s.push_str("\n### Notes\n\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }

    pub fn json(&self) -> Value {
        let sections: Vec<Value> = self
            .sections
            .iter()
            .map(|sec| {
                let figures: Vec<Value> = sec
                    .figures
                    .iter()
                    .map(|f| {
                        json!({
                            "key": f.key,
                            "label": f.label,
                            "unit": f.unit.name(),
                            "median": f.median(),
                            "min": min(&f.samples),
                            "max": max(&f.samples),
                            "runs": f.samples.len(),
                            "samples": f.samples,
                            "ratio": f.ratio.as_ref().map(|(b, r)| json!({"vs": b, "value": r})),
                            "note": f.note,
                        })
                    })
                    .collect();
                json!({
                    "title": sec.title,
                    "skipped": sec.skipped,
                    "figures": figures,
                    "notes": sec.notes,
                })
            })
            .collect();
        let machine: serde_json::Map<String, Value> = self
            .machine
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        json!({
            "mode": self.mode,
            "started": self.started,
            "total_secs": self.total_secs,
            "machine": machine,
            "targets": self.targets.iter().map(|t| json!({
                "what": t.what, "goal": t.goal, "measured": t.measured, "met": t.met,
            })).collect::<Vec<_>>(),
            "sections": sections,
            "notes": self.notes,
        })
    }
}

fn mark(
    met: Option<bool>,
    yes: &'static str,
    no: &'static str,
    none: &'static str,
) -> &'static str {
    match met {
        Some(true) => yes,
        Some(false) => no,
        None => none,
    }
}
