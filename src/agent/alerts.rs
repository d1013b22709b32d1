//! Usage alerts: one warning per crossing above the threshold (volumes over their `size`, filesystems holding volumes), one info on recovery, state persisted in `<root>/state/agent/alerts.json`.
//!
//! The decision is pure ([`decide`], [`AlertState::observe`]): it returns
//! [`AlertEvent`]s and touches neither logs nor disk. [`log_event`] turns an
//! event into a log line and [`AlertState::save`] persists the state, so an
//! agent restart during an ongoing crossing does not warn again.
//!
//! Rules, for every subject (a volume with a `size`, or a filesystem):
//! * not alerting, and usage is at or above `threshold` → [`Transition::Crossed`] (a warning);
//! * alerting, and usage drops below `threshold - hysteresis` → [`Transition::Recovered`] (an info);
//! * otherwise nothing; an unknown usage (the measurement failed) changes nothing;
//! * an alerting subject absent from an observation (volume removed, or its
//!   filesystem no longer holds volumes) is forgotten ([`Transition::Forgotten`], an info).
//!
//! The hysteresis (default 2 points) keeps a volume hovering at the threshold
//! from warning on every measurement.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::core::layout::{HostView, Layout};
use crate::usage::{self, Report, ReportOptions};

/// Default hysteresis in percentage points.
pub const DEFAULT_HYSTERESIS: f64 = 2.0;

/// What an alert is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "lowercase")]
pub enum Subject {
    /// A volume, by name, measured against its `size`.
    Volume(String),
    /// A filesystem holding volumes, by mount point.
    Filesystem(String),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Volume(v) => write!(f, "volume {v}"),
            Subject::Filesystem(m) => write!(f, "filesystem {m}"),
        }
    }
}

/// Alert settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AlertConfig {
    /// Percent at or above which a subject alerts (default 80).
    pub threshold: f64,
    /// Percentage points below the threshold a subject must drop to recover (default 2).
    pub hysteresis: f64,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            threshold: usage::DEFAULT_THRESHOLD_PERCENT,
            hysteresis: DEFAULT_HYSTERESIS,
        }
    }
}

/// A change of alert state.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Transition {
    /// Went to or above the threshold.
    Crossed,
    /// Went back below `threshold - hysteresis`.
    Recovered,
    /// Was alerting and is no longer observed.
    Forgotten,
}

/// The pure rule for one subject: `active` is whether it is alerting now, `percent` its usage (None = unknown).
pub fn decide(active: bool, percent: Option<f64>, cfg: &AlertConfig) -> Option<Transition> {
    let p = percent?;
    if !active && p >= cfg.threshold {
        Some(Transition::Crossed)
    } else if active && p < cfg.threshold - cfg.hysteresis {
        Some(Transition::Recovered)
    } else {
        None
    }
}

/// One thing to tell the operator.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertEvent {
    pub subject: Subject,
    pub transition: Transition,
    /// Usage when it happened (None for `Forgotten`).
    pub percent: Option<f64>,
    pub threshold: f64,
}

/// An ongoing crossing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActiveAlert {
    pub subject: Subject,
    /// When it crossed.
    pub since: DateTime<Utc>,
    /// Usage at the crossing.
    pub percent: f64,
}

#[derive(Serialize, Deserialize)]
struct Persisted {
    version: u32,
    active: Vec<ActiveAlert>,
}

/// Which subjects are alerting. Feed it successive measurements with [`AlertState::observe`].
#[derive(Clone, Debug)]
pub struct AlertState {
    pub config: AlertConfig,
    active: BTreeMap<Subject, ActiveAlert>,
    path: Option<PathBuf>,
    dirty: bool,
}

/// Where the state is persisted: `<root>/state/agent/alerts.json`.
pub fn state_path(layout: &Layout) -> PathBuf {
    layout.agent_dir().join("alerts.json")
}

impl AlertState {
    /// A state that lives in memory only.
    pub fn new(config: AlertConfig) -> AlertState {
        AlertState {
            config,
            active: BTreeMap::new(),
            path: None,
            dirty: false,
        }
    }

    /// The persisted state of this root (empty if absent; a corrupt file is reported and ignored).
    pub fn load(layout: &Layout, config: AlertConfig) -> AlertState {
        let path = state_path(layout);
        let mut s = AlertState::new(config);
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Persisted>(&bytes) {
                Ok(p) => {
                    s.active = p
                        .active
                        .into_iter()
                        .map(|a| (a.subject.clone(), a))
                        .collect()
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "alert state is corrupt ({e}); starting afresh")
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %path.display(), "cannot read alert state: {e}"),
        }
        s.path = Some(path);
        s
    }

    /// Is this subject alerting?
    pub fn is_active(&self, subject: &Subject) -> bool {
        self.active.contains_key(subject)
    }

    /// The ongoing crossings.
    pub fn active(&self) -> impl Iterator<Item = &ActiveAlert> {
        self.active.values()
    }

    /// Apply one complete observation: every subject that can alert, with its usage
    /// (None = unknown this time). Pure: returns what changed, logs nothing, writes nothing.
    pub fn observe(
        &mut self,
        observations: &[(Subject, Option<f64>)],
        now: DateTime<Utc>,
    ) -> Vec<AlertEvent> {
        let mut events = Vec::new();
        let threshold = self.config.threshold;
        for (subject, percent) in observations {
            let active = self.active.contains_key(subject);
            let Some(t) = decide(active, *percent, &self.config) else {
                continue;
            };
            match t {
                Transition::Crossed => {
                    self.active.insert(
                        subject.clone(),
                        ActiveAlert {
                            subject: subject.clone(),
                            since: now,
                            percent: percent.unwrap_or_default(),
                        },
                    );
                }
                Transition::Recovered | Transition::Forgotten => {
                    self.active.remove(subject);
                }
            }
            self.dirty = true;
            events.push(AlertEvent {
                subject: subject.clone(),
                transition: t,
                percent: *percent,
                threshold,
            });
        }
        let seen: std::collections::HashSet<&Subject> =
            observations.iter().map(|(s, _)| s).collect();
        let gone: Vec<Subject> = self
            .active
            .keys()
            .filter(|s| !seen.contains(s))
            .cloned()
            .collect();
        for subject in gone {
            self.active.remove(&subject);
            self.dirty = true;
            events.push(AlertEvent {
                subject,
                transition: Transition::Forgotten,
                percent: None,
                threshold,
            });
        }
        events
    }

    /// [`AlertState::observe`] a usage report: volumes with a `size` (unknown if their
    /// measurement failed) and every filesystem in it.
    pub fn observe_report(&mut self, report: &Report) -> Vec<AlertEvent> {
        let mut obs: Vec<(Subject, Option<f64>)> = report
            .volumes
            .iter()
            .filter(|v| v.capacity.is_some())
            .map(|v| (Subject::Volume(v.name.clone()), v.percent))
            .collect();
        obs.extend(report.filesystems.iter().map(|f| {
            (
                Subject::Filesystem(f.mount.display().to_string()),
                Some(f.percent),
            )
        }));
        self.observe(&obs, report.measured_at)
    }

    /// Persist atomically if anything changed since the last save (no-op for a memory-only state).
    pub fn save(&mut self) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            crate::fs::durable::ensure_dir(dir, 0o700)?;
        }
        let p = Persisted {
            version: 1,
            active: self.active.values().cloned().collect(),
        };
        let mut bytes = serde_json::to_vec_pretty(&p).map_err(io::Error::other)?;
        bytes.push(b'\n');
        crate::fs::durable::atomic_write(path, &bytes, 0o600)?;
        self.dirty = false;
        Ok(())
    }
}

/// The log line of an event: `warn` for a crossing, `info` otherwise.
pub fn log_event(e: &AlertEvent) {
    let pct = e.percent.map(|p| format!("{p:.1}%")).unwrap_or_default();
    match e.transition {
        Transition::Crossed => tracing::warn!(
            subject = %e.subject,
            percent = e.percent.unwrap_or_default(),
            threshold = e.threshold,
            "{} is {} full, at or above the {}% alert threshold",
            e.subject,
            pct,
            e.threshold
        ),
        Transition::Recovered => tracing::info!(
            subject = %e.subject,
            percent = e.percent.unwrap_or_default(),
            threshold = e.threshold,
            "{} is back below the alert threshold ({})",
            e.subject,
            pct
        ),
        Transition::Forgotten => tracing::info!(
            subject = %e.subject,
            "{} is no longer measured; its usage alert is cleared",
            e.subject
        ),
    }
}

/// The agent's periodic call: measure every volume (writing their `UsageCache`s),
/// warn once per crossing, persist the alert state, and return the report (hand it to
/// `metrics::MetricsState::set_report`).
///
/// ```no_run
/// # use allspark::{agent::alerts::*, core::layout::*, usage::ReportOptions};
/// let layout = Layout::new("/var/lib/allspark");
/// let view = HostView::default();
/// let mut alerts = AlertState::load(&layout, AlertConfig::default());
/// loop {
///     let report = measure_and_alert(&layout, &view, &mut alerts, &ReportOptions::default());
///     // metrics.set_report(report);
///     # let _ = report;
///     std::thread::sleep(std::time::Duration::from_secs(300));
/// }
/// ```
/// It blocks for the length of the walks: from async code run it in `spawn_blocking`.
pub fn measure_and_alert(
    layout: &Layout,
    view: &HostView,
    alerts: &mut AlertState,
    opts: &ReportOptions,
) -> Report {
    let opts = ReportOptions {
        threshold_percent: alerts.config.threshold,
        ..opts.clone()
    };
    let report = usage::measure_report(layout, view, &opts);
    for e in alerts.observe_report(&report) {
        log_event(&e);
    }
    if let Err(e) = alerts.save() {
        tracing::warn!("cannot save alert state: {e}");
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decide_has_hysteresis_and_ignores_unknown() {
        let c = AlertConfig::default();
        assert_eq!(decide(false, Some(79.9), &c), None);
        assert_eq!(decide(false, Some(80.0), &c), Some(Transition::Crossed));
        assert_eq!(decide(true, Some(95.0), &c), None);
        assert_eq!(decide(true, Some(78.5), &c), None);
        assert_eq!(decide(true, Some(77.9), &c), Some(Transition::Recovered));
        assert_eq!(decide(true, None, &c), None);
        assert_eq!(decide(false, None, &c), None);
    }

    #[test]
    fn absent_subject_is_forgotten_once() {
        let mut s = AlertState::new(AlertConfig::default());
        let v = Subject::Volume("a".into());
        let e = s.observe(&[(v.clone(), Some(90.0))], Utc::now());
        assert_eq!(e.len(), 1);
        let e = s.observe(&[], Utc::now());
        assert_eq!(e[0].transition, Transition::Forgotten);
        assert!(s.observe(&[], Utc::now()).is_empty());
    }
}
