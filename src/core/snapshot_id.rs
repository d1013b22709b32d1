//! Snapshot ids: UTC timestamps `YYYYmmddTHHMMSS.ffffffZ` that sort by time, checked once where an id enters (a command line, a directory listing, an option) and carried as a [`SnapshotId`] from there on.

use chrono::{DateTime, Utc};

/// A new id for `at`.
pub fn new_id(at: DateTime<Utc>) -> String {
    at.format("%Y%m%dT%H%M%S%.6fZ").to_string()
}

/// A new id, strictly after the last one even if the clock went back.
pub fn next_id(last: Option<&str>) -> String {
    let mut at = Utc::now();
    if let Some(prev) = last.and_then(|l| parse(l).ok()) {
        if at <= prev {
            at = prev + chrono::Duration::microseconds(1);
        }
    }
    new_id(at)
}

/// Check an id taken from a user or a file.
pub fn validate(id: &str) -> Result<(), String> {
    parse(id).map(|_| ())
}

/// The time an id stands for.
pub fn parse(id: &str) -> Result<DateTime<Utc>, String> {
    chrono::NaiveDateTime::parse_from_str(id, "%Y%m%dT%H%M%S%.6fZ")
        .map(|t| t.and_utc())
        .ok()
        .filter(|_| id.len() == 23)
        .ok_or_else(|| format!("invalid snapshot id {id:?}: ids look like 20261125T200000.000000Z"))
}

/// A snapshot id that parsed as a timestamp (so it is one path component).
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct SnapshotId(String);

impl SnapshotId {
    /// A new id for `at`.
    pub fn at(at: DateTime<Utc>) -> SnapshotId {
        SnapshotId(new_id(at))
    }
    /// Check `s`; the error shows what ids look like.
    pub fn parse(s: &str) -> Result<SnapshotId, String> {
        parse(s)?;
        Ok(SnapshotId(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The time the id stands for.
    pub fn time(&self) -> DateTime<Utc> {
        parse(&self.0).expect("a SnapshotId is checked when made")
    }
}

impl std::str::FromStr for SnapshotId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        SnapshotId::parse(s)
    }
}

impl TryFrom<String> for SnapshotId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        parse(&s)?;
        Ok(SnapshotId(s))
    }
}

impl From<SnapshotId> for String {
    fn from(n: SnapshotId) -> String {
        n.0
    }
}

impl std::ops::Deref for SnapshotId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for SnapshotId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::path::Path> for SnapshotId {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

impl std::fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for SnapshotId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sort_by_time() {
        let a = Utc::now();
        let b = a + chrono::Duration::milliseconds(1);
        let (ia, ib) = (new_id(a), new_id(b));
        assert!(ia < ib);
        validate(&ia).unwrap();
        assert!(validate("../etc").is_err());
        assert!(validate("20261125T200000Z").is_err());
    }
}
