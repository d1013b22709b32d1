//! Counts and latencies of plugin calls, kept in memory and flushed to `<root>/state/plugin-stats.json` for the agent's metrics.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Totals of one call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CallTotals {
    pub ok: u64,
    pub errors: u64,
    pub micros_total: u64,
    pub micros_max: u64,
}

static STATS: Mutex<BTreeMap<String, CallTotals>> = Mutex::new(BTreeMap::new());

/// Count one call.
pub fn record(call: &str, ok: bool, micros: u64) {
    let mut s = STATS.lock().unwrap_or_else(|p| p.into_inner());
    let t = s.entry(call.to_string()).or_default();
    if ok {
        t.ok += 1;
    } else {
        t.errors += 1;
    }
    t.micros_total += micros;
    t.micros_max = t.micros_max.max(micros);
}

/// A copy of the totals so far.
pub fn snapshot() -> BTreeMap<String, CallTotals> {
    STATS.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Write the totals atomically to `path` (called periodically by the plugin).
pub fn flush(path: &std::path::Path) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(&snapshot()).map_err(std::io::Error::other)?;
    crate::fs::durable::atomic_write(path, &bytes, 0o600)
}

/// Read totals written by `flush`.
pub fn load(path: &std::path::Path) -> Option<BTreeMap<String, CallTotals>> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}
