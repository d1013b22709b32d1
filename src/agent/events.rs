//! Watches Docker events: when a container labelled `allspark.snapshot=on-stop` stops, spools a snapshot of each of its volumes.
//! Event streams end when dockerd restarts; the watcher reconnects from a persisted cursor (`since`) and misses nothing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bollard::system::EventsOptions;
use chrono::Utc;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::config::Layout;
use crate::fsutil;
use crate::spool::{self, Event, EventKind};

/// The label that asks for a snapshot of a container's volumes when it stops.
pub const SNAPSHOT_LABEL: &str = "allspark.snapshot";
/// The label value for that.
pub const ON_STOP: &str = "on-stop";

/// The last event handled, persisted so a reconnect or a restart resumes after it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub time_nano: i64,
}

fn cursor_path(layout: &Layout) -> PathBuf {
    layout.agent_dir().join("events-cursor.json")
}

fn load_cursor(layout: &Layout) -> Option<Cursor> {
    serde_json::from_slice(&std::fs::read(cursor_path(layout)).ok()?).ok()
}

fn save_cursor(layout: &Layout, c: Cursor) {
    let bytes = serde_json::to_vec(&c).unwrap_or_default();
    if let Err(e) = fsutil::atomic_write(&cursor_path(layout), &bytes, 0o600) {
        tracing::warn!(%e, "cannot save the Docker events cursor");
    }
}

/// Run forever: connect, catch up from the cursor, follow, reconnect.
pub async fn watch(layout: Layout, docker_url: String) {
    let mut volumes_of: HashMap<String, Vec<String>> = HashMap::new();
    let mut cursor = load_cursor(&layout).unwrap_or(Cursor {
        time_nano: Utc::now().timestamp_nanos_opt().unwrap_or_default(),
    });
    save_cursor(&layout, cursor);
    loop {
        let docker = match crate::docker::connect(&docker_url).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "Docker is not reachable; retrying in 2 s");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        remember_labelled(&docker, &mut volumes_of).await;
        let since = format!(
            "{}.{:09}",
            cursor.time_nano / 1_000_000_000,
            cursor.time_nano % 1_000_000_000
        );
        let mut filters = HashMap::new();
        filters.insert("type".to_string(), vec!["container".to_string()]);
        filters.insert(
            "event".to_string(),
            vec!["start".to_string(), "die".to_string()],
        );
        filters.insert(
            "label".to_string(),
            vec![format!("{SNAPSHOT_LABEL}={ON_STOP}")],
        );
        let mut stream = docker.events(Some(EventsOptions::<String> {
            since: Some(since),
            until: None,
            filters,
        }));
        tracing::info!("following Docker events");
        while let Some(item) = stream.next().await {
            let msg = match item {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(%e, "the Docker event stream broke; reconnecting");
                    break;
                }
            };
            let t = msg.time_nano.unwrap_or_default();
            if t <= cursor.time_nano {
                continue;
            }
            let id = msg
                .actor
                .as_ref()
                .and_then(|a| a.id.clone())
                .unwrap_or_default();
            match msg.action.as_deref() {
                Some("start") => {
                    if let Ok(Some((_, _, vols))) =
                        crate::docker::container_volumes(&docker, &id).await
                    {
                        volumes_of.insert(id.clone(), vols);
                    }
                }
                Some("die") => {
                    let vols = match crate::docker::container_volumes(&docker, &id).await {
                        Ok(Some((_, _, v))) => v,
                        _ => volumes_of.get(&id).cloned().unwrap_or_default(),
                    };
                    volumes_of.remove(&id);
                    for v in vols {
                        let event = Event {
                            kind: EventKind::Stop,
                            volume: v.clone(),
                            at: Utc::now(),
                            container: Some(id.clone()),
                        };
                        let layout = layout.clone();
                        match tokio::task::spawn_blocking(move || spool::write(&layout, &event))
                            .await
                        {
                            Ok(Ok(_)) => {
                                tracing::info!(volume = %v, container = %id, "container stopped: snapshot queued")
                            }
                            other => {
                                tracing::error!(volume = %v, ?other, "cannot queue the snapshot of a stopped container")
                            }
                        }
                    }
                }
                _ => {}
            }
            cursor = Cursor { time_nano: t };
            let l = layout.clone();
            let _ = tokio::task::spawn_blocking(move || save_cursor(&l, cursor)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Learn the volumes of labelled containers that exist now (a `--rm` container may be gone by the time it dies).
async fn remember_labelled(
    docker: &bollard::Docker,
    volumes_of: &mut HashMap<String, Vec<String>>,
) {
    match crate::docker::containers(docker, None).await {
        Ok(cs) => {
            for c in cs {
                if c.labels.get(SNAPSHOT_LABEL).map(String::as_str) == Some(ON_STOP) {
                    volumes_of.insert(c.id, c.volumes);
                }
            }
        }
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot list containers"),
    }
}
