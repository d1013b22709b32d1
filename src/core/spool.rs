//! The plugin -> agent outbox: one durable event file per hook-worthy transition, consumed in order; and content-free requests to measure a volume now.
//!
//! A measure request (`<root>/state/measure/<volume>`, an empty file) is not
//! an event: it carries nothing that can be torn, needs no fsync (a lost one
//! only means the figures wait for the next usage walk), and requests for one
//! volume coalesce until the agent takes them. The plugin makes one at Create,
//! at the last Unmount and at Remove; a restore makes one too.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::core::layout::Layout;
use crate::core::names::VolumeName;
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
}

/// One spooled event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub volume: VolumeName,
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
pub fn request_measure(layout: &Layout, volume: &VolumeName) {
    let dir = layout.measure_dir();
    let made = durable::ensure_dir(&dir, 0o700).and_then(|()| {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(layout.measure_request(volume))
            .map(drop)
    });
    if let Err(e) = made {
        tracing::warn!(%volume, %e, "cannot request a measurement; the volume is measured at the next usage walk");
    }
}

/// Take the pending measure requests: their markers are deleted, the volume names returned (sorted).
/// A request made while the caller measures leaves a new marker, so nothing is missed.
pub fn take_measure_requests(layout: &Layout) -> Vec<VolumeName> {
    let Ok(rd) = fs::read_dir(layout.measure_dir()) else {
        return Vec::new();
    };
    let mut names: Vec<VolumeName> = rd
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| VolumeName::parse(n).ok())
        })
        .filter(|n| match fs::remove_file(layout.measure_request(n)) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(volume = %n, %e, "cannot take a measure request");
                false
            }
        })
        .collect();
    names.sort();
    names
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
                    volume: VolumeName::fixed(v),
                    at,
                    container: None,
                },
            )
            .unwrap();
        }
        let files = pending(&layout).unwrap();
        let vols: Vec<VolumeName> = files.iter().map(|f| read(f).unwrap().volume).collect();
        assert_eq!(vols, ["a", "b", "c"]);
        done(&files[0]).unwrap();
        assert_eq!(pending(&layout).unwrap().len(), 2);
    }

    #[test]
    fn measure_requests_coalesce_and_are_taken_once() {
        let d = tempfile::tempdir().unwrap();
        let layout = Layout::new(d.path());
        layout.ensure().unwrap();
        for v in ["b", "a", "b", "b"] {
            request_measure(&layout, &VolumeName::fixed(v));
        }
        fs::write(layout.measure_dir().join(".junk"), b"").unwrap();
        assert_eq!(take_measure_requests(&layout), ["a", "b"]);
        assert!(take_measure_requests(&layout).is_empty());
        request_measure(&layout, &VolumeName::fixed("a"));
        assert_eq!(take_measure_requests(&layout), ["a"]);
    }
}
