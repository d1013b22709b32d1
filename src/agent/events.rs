//! Watches Docker events: when a container labelled `allspark.snapshot=on-stop` stops, spools a snapshot of each of its volumes.
//! Event streams end when dockerd restarts; the watcher reconnects from a persisted cursor (`since`) and misses nothing.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use bollard::models::{EventMessage, EventMessageTypeEnum};
use bollard::system::EventsOptions;
use chrono::Utc;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::core::layout::Layout;
use crate::core::spool::{self, Event, EventKind};
use crate::fs::durable;

/// The label that asks for a snapshot of a container's volumes when it stops.
pub(crate) const SNAPSHOT_LABEL: &str = "allspark.snapshot";
/// The label value for that.
pub(crate) const ON_STOP: &str = "on-stop";

/// The last event handled, persisted so a reconnect or a restart resumes after it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Cursor {
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
    if let Err(e) = durable::atomic_write(&cursor_path(layout), &bytes, 0o600) {
        tracing::warn!(%e, "cannot save the Docker events cursor");
    }
}

/// Run forever: connect, catch up from the cursor, follow, reconnect.
///
/// Labelled containers are learnt from container events (their labels are in the event's
/// attributes) and from a listing at each connect; the snapshot itself is triggered by the
/// volume `unmount` events Docker sends when such a container stops (they name the volume and
/// the container), so a `--rm` container that is gone by the time the events are read, e.g.
/// after the agent was down, is still handled.
pub(crate) async fn watch(layout: Layout, docker_url: String) {
    let mut labelled: HashSet<String> = HashSet::new();
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
        remember_labelled(&docker, &mut labelled).await;
        let since = format!(
            "{}.{:09}",
            cursor.time_nano / 1_000_000_000,
            cursor.time_nano % 1_000_000_000
        );
        let mut filters = HashMap::new();
        filters.insert(
            "type".to_string(),
            vec!["container".to_string(), "volume".to_string()],
        );
        filters.insert(
            "event".to_string(),
            ["create", "start", "die", "destroy", "unmount"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
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
            if let Some(event) = interpret(&msg, &mut labelled) {
                let (volume, container) = (
                    event.volume.clone(),
                    event.container.clone().unwrap_or_default(),
                );
                let layout = layout.clone();
                match tokio::task::spawn_blocking(move || spool::write(&layout, &event)).await {
                    Ok(Ok(_)) => tracing::info!(
                        %volume,
                        container,
                        "labelled container stopped: snapshot queued"
                    ),
                    other => tracing::error!(
                        %volume,
                        ?other,
                        "cannot queue the snapshot of a stopped container"
                    ),
                }
            }
            cursor = Cursor { time_nano: t };
            let l = layout.clone();
            let _ = tokio::task::spawn_blocking(move || save_cursor(&l, cursor)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Update what is known from one event; a spool event when a labelled container's volume was unmounted.
pub(crate) fn interpret(msg: &EventMessage, labelled: &mut HashSet<String>) -> Option<Event> {
    let actor = msg.actor.as_ref()?;
    let id = actor.id.clone().unwrap_or_default();
    let attrs = actor.attributes.clone().unwrap_or_default();
    match (msg.typ, msg.action.as_deref()) {
        (Some(EventMessageTypeEnum::CONTAINER), Some("destroy")) => {
            labelled.remove(&id);
            None
        }
        (Some(EventMessageTypeEnum::CONTAINER), Some(_)) => {
            if attrs.get(SNAPSHOT_LABEL).map(String::as_str) == Some(ON_STOP) {
                labelled.insert(id);
            }
            None
        }
        (Some(EventMessageTypeEnum::VOLUME), Some("unmount")) => {
            let container = attrs.get("container")?;
            let volume = crate::core::names::VolumeName::parse(&id).ok()?;
            labelled.contains(container).then(|| Event {
                kind: EventKind::Stop,
                volume,
                at: Utc::now(),
                container: Some(container.clone()),
            })
        }
        _ => None,
    }
}

/// Learn the labelled containers that exist now (created before the cursor).
async fn remember_labelled(docker: &bollard::Docker, labelled: &mut HashSet<String>) {
    match crate::docker::containers(docker, None).await {
        Ok(cs) => {
            for c in cs {
                if c.labels.get(SNAPSHOT_LABEL).map(String::as_str) == Some(ON_STOP) {
                    labelled.insert(c.id);
                }
            }
        }
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot list containers"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::EventActor;

    fn msg(
        typ: EventMessageTypeEnum,
        action: &str,
        id: &str,
        attrs: &[(&str, &str)],
    ) -> EventMessage {
        EventMessage {
            typ: Some(typ),
            action: Some(action.into()),
            actor: Some(EventActor {
                id: Some(id.into()),
                attributes: Some(
                    attrs
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_unmounts_of_labelled_containers_queue_snapshots() {
        let mut labelled = HashSet::new();
        let c = EventMessageTypeEnum::CONTAINER;
        let v = EventMessageTypeEnum::VOLUME;
        assert!(interpret(
            &msg(c, "create", "c1", &[(SNAPSHOT_LABEL, ON_STOP)]),
            &mut labelled
        )
        .is_none());
        assert!(interpret(&msg(c, "create", "c2", &[("other", "x")]), &mut labelled).is_none());
        let e = interpret(
            &msg(v, "unmount", "vol1", &[("container", "c1")]),
            &mut labelled,
        )
        .expect("labelled");
        assert_eq!(
            (e.kind, e.volume.as_str(), e.container.as_deref()),
            (EventKind::Stop, "vol1", Some("c1"))
        );
        assert!(interpret(
            &msg(v, "unmount", "vol2", &[("container", "c2")]),
            &mut labelled
        )
        .is_none());
        interpret(&msg(c, "destroy", "c1", &[]), &mut labelled);
        assert!(interpret(
            &msg(v, "unmount", "vol1", &[("container", "c1")]),
            &mut labelled
        )
        .is_none());
        // A container first seen at its death (created before the cursor) still counts.
        interpret(
            &msg(c, "die", "c3", &[(SNAPSHOT_LABEL, ON_STOP)]),
            &mut labelled,
        );
        assert!(interpret(
            &msg(v, "unmount", "vol3", &[("container", "c3")]),
            &mut labelled
        )
        .is_some());
    }
}
