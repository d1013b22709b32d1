//! The plugin -> agent outbox: one durable event file per hook-worthy transition, consumed in order.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::core::layout::Layout;
use crate::fs::durable;

/// What happened to a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// The first mount is about to happen (the plugin waits for an `on-mount` snapshot).
    Mount,
    /// The last mount is gone.
    Unmount,
    /// A container labelled `allspark.snapshot=on-stop` stopped (written by the agent itself).
    Stop,
    /// The volume was created, its last container stopped, it was restored or removed:
    /// measure it now (`/metrics`, `docker volume inspect`) instead of at the next usage walk.
    Measure,
}

/// One spooled event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub volume: String,
    pub at: DateTime<Utc>,
    /// The container that stopped (for `Stop` events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// File name that sorts in the order events were written (time, then pid, then a counter).
fn event_file_name(at: DateTime<Utc>) -> String {
    let nanos = at.timestamp_nanos_opt().unwrap_or_default();
    format!(
        "{nanos:020}-{:010}-{:08}.json",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Write an event durably; returns its file, which disappears once the agent has done the work.
pub fn write(layout: &Layout, event: &Event) -> io::Result<PathBuf> {
    let path = layout.spool_dir().join(event_file_name(event.at));
    let bytes = serde_json::to_vec(event).map_err(io::Error::other)?;
    durable::atomic_write(&path, &bytes, 0o600)?;
    Ok(path)
}

/// Pending event files, oldest first.
pub fn pending(layout: &Layout) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(layout.spool_dir())?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Read one event file; a corrupt one is an error naming the file.
pub fn read(path: &Path) -> io::Result<Event> {
    let bytes = fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("spool event {} is corrupt: {e}", path.display()),
        )
    })
}

/// Ask the agent to measure `volume` now (best effort: a failure is logged, the periodic walk catches up).
pub fn request_measure(layout: &Layout, volume: &str) {
    let event = Event {
        kind: EventKind::Measure,
        volume: volume.to_string(),
        at: Utc::now(),
        container: None,
    };
    if let Err(e) = write(layout, &event) {
        tracing::warn!(volume, %e, "cannot spool a measure request; the volume is measured at the next usage walk");
    }
}

/// Delete an event after its work is durable.
pub fn done(path: &Path) -> io::Result<()> {
    durable::remove_durable(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_back_in_order() {
        let d = tempfile::tempdir().unwrap();
        let layout = Layout::new(d.path());
        layout.ensure().unwrap();
        let now = Utc::now();
        for (i, v) in ["a", "b", "c"].iter().enumerate() {
            let at = now + chrono::Duration::microseconds(i as i64);
            write(
                &layout,
                &Event {
                    kind: EventKind::Unmount,
                    volume: v.to_string(),
                    at,
                    container: None,
                },
            )
            .unwrap();
        }
        let files = pending(&layout).unwrap();
        let vols: Vec<String> = files.iter().map(|f| read(f).unwrap().volume).collect();
        assert_eq!(vols, ["a", "b", "c"]);
        done(&files[0]).unwrap();
        assert_eq!(pending(&layout).unwrap().len(), 2);
    }
}
