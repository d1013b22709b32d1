//! Snapshot ids: UTC timestamps `YYYYmmddTHHMMSS.ffffffZ` that sort by time.

use chrono::{DateTime, Utc};

/// A new id for `at`.
pub fn new_id(at: DateTime<Utc>) -> String {
    at.format("%Y%m%dT%H%M%S%.6fZ").to_string()
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
