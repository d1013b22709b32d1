//! Cron expressions (standard 5 fields, local time, `sun`..`sat`) and the persisted last run of each scheduled job (`<root>/state/agent/schedule.json`), shared by the backup schedule and the containers' maintenance schedule.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Context;
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::core::layout::Layout;
use crate::fs::durable;

/// A parsed 5-field cron expression.
#[derive(Clone, Debug)]
pub struct Cron {
    pub source: String,
    schedule: cron::Schedule,
}

impl FromStr for Cron {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_cron(s)
    }
}

/// The day-of-week field in the cron crate's numbering (1 = Sunday … 7 = Saturday).
fn translate_dow(field: &str) -> Result<String, String> {
    if field == "*" || field == "?" {
        return Ok(field.to_string());
    }
    let num = |s: &str| -> Result<u32, String> {
        let names = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
        if let Some(i) = names.iter().position(|n| s.eq_ignore_ascii_case(n)) {
            return Ok(i as u32);
        }
        match s.parse::<u32>() {
            Ok(n) if n <= 7 => Ok(n % 7),
            _ => Err(format!("{s:?} is not a day of the week (0-7 or sun..sat)")),
        }
    };
    let mut days = [false; 7];
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("{s:?} is not a step"))?,
            ),
            None => (item, 1),
        };
        let (lo, hi) = if range == "*" {
            (0, 6)
        } else if let Some((a, b)) = range.split_once('-') {
            let a = num(a)?;
            let b = if b == "7" { 7 } else { num(b)? };
            (a, b)
        } else {
            let a = num(range)?;
            (a, if item.contains('/') { 6 } else { a })
        };
        if lo > hi {
            return Err(format!("range {range:?} goes backwards"));
        }
        let mut d = lo;
        while d <= hi {
            days[(d % 7) as usize] = true;
            d += step;
        }
    }
    let list: Vec<String> = (0..7)
        .filter(|d| days[*d])
        .map(|d| (d + 1).to_string())
        .collect();
    Ok(list.join(","))
}

/// Parse a standard 5-field cron expression (the cron crate wants seconds first and numbers Sunday 1).
pub(crate) fn parse_cron(expr: &str) -> Result<Cron, String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "invalid cron expression {expr:?}: expected 5 fields (minute hour day-of-month month day-of-week), e.g. \"0 2 * * *\""
        ));
    }
    let dow = translate_dow(fields[4])
        .map_err(|e| format!("invalid cron expression {expr:?}: day of week: {e}"))?;
    let six = format!(
        "0 {} {} {} {} {}",
        fields[0], fields[1], fields[2], fields[3], dow
    );
    let schedule = cron::Schedule::from_str(&six)
        .map_err(|e| format!("invalid cron expression {expr:?}: {e}"))?;
    Ok(Cron {
        source: expr.to_string(),
        schedule,
    })
}

impl Cron {
    /// The latest due time at or before `now`.
    pub fn latest_due<Z: TimeZone>(&self, now: &DateTime<Z>) -> Option<DateTime<Z>> {
        let after = now.clone() + chrono::Duration::seconds(1);
        self.schedule.after(&after).next_back()
    }

    /// The first due time after `now`.
    pub fn next_due<Z: TimeZone>(&self, now: &DateTime<Z>) -> Option<DateTime<Z>> {
        self.schedule.after(now).next()
    }
}

/// Is a job due: its latest due time (at or before `now`) is after its last run?
/// A job that never ran is not due (its baseline is set when first seen).
pub(crate) fn due<Z: TimeZone>(
    cron: &Cron,
    last_run: Option<DateTime<Utc>>,
    now: &DateTime<Z>,
) -> bool {
    match (last_run, cron.latest_due(now)) {
        (Some(last), Some(latest)) => latest.with_timezone(&Utc) > last,
        _ => false,
    }
}

/// `schedule.json`: last run (start time) per job.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct State {
    #[serde(default)]
    pub last_run: BTreeMap<String, DateTime<Utc>>,
}

pub(crate) fn state_path(layout: &Layout) -> PathBuf {
    layout.agent_dir().join("schedule.json")
}

pub(crate) fn load_state(layout: &Layout) -> State {
    let p = state_path(layout);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            tracing::error!(path = %p.display(), %e, "the schedule state is corrupt; starting afresh (missed runs are not caught up)");
            State::default()
        }),
        Err(_) => State::default(),
    }
}

pub(crate) fn save_state(layout: &Layout, s: &State) -> anyhow::Result<()> {
    let p = state_path(layout);
    durable::ensure_dir(&layout.agent_dir(), 0o700)?;
    durable::atomic_write(&p, &serde_json::to_vec_pretty(s)?, 0o600)
        .with_context(|| format!("cannot write {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::schedule::DEFAULT_WEEKLY;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn five_fields_are_required_and_bad_ones_named() {
        assert!(parse_cron("0 2 * * *").is_ok());
        assert!(parse_cron("0 0 2 * * *").unwrap_err().contains("5 fields"));
        assert!(parse_cron("0 25 * * *").is_err());
        assert!(parse_cron("0 2 * * 8").unwrap_err().contains("day of week"));
    }

    #[test]
    fn day_of_week_uses_standard_numbering() {
        assert_eq!(translate_dow("0").unwrap(), "1");
        assert_eq!(translate_dow("7").unwrap(), "1");
        assert_eq!(translate_dow("1-5").unwrap(), "2,3,4,5,6");
        assert_eq!(translate_dow("5-7").unwrap(), "1,6,7");
        assert_eq!(translate_dow("sat,sun").unwrap(), "1,7");
        assert_eq!(translate_dow("*/2").unwrap(), "1,3,5,7");
        // 2024-06-02 was a Sunday.
        let weekly = parse_cron(DEFAULT_WEEKLY).unwrap();
        let next = weekly.next_due(&t("2024-05-29T12:00:00Z")).unwrap();
        assert_eq!(next, t("2024-06-02T03:00:00Z"));
    }
}
