//! Scheduled maintenance commands: `allspark.maintenance.exec=<command>` run in the labelled container on its `allspark.maintenance.schedule=<cron>`, each result logged and counted in `<root>/state/agent/maintenance.json` for `/metrics`.
//!
//! The agent's scheduler looks at the running containers (only those with
//! `--container-label`, if set) at least once a minute. A container is keyed
//! by its name, so a container recreated by compose keeps its history. The
//! schedule follows the backup jobs' rules ([`crate::agent::cron::due`]):
//! a container seen for the first time gets a baseline and runs at its next
//! due time; a due time missed while the agent was down runs once.
//!
//! A run is `sh -c <command>` through `docker exec`; it succeeded when it
//! exits 0. Its result (exit status, the tail of its output) is logged, and
//! `maintenance.json` keeps per container the counts of successful and failed
//! runs and the last result, which `/metrics` exposes as
//! `allspark_maintenance_runs_total{container,outcome}`,
//! `allspark_last_maintenance_timestamp_seconds{container}` and
//! `allspark_last_maintenance_success{container}`.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Local, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::agent::cron::{self, parse_cron, Cron, State};
use crate::backup::{Settings, LABEL_MAINTENANCE_EXEC, LABEL_MAINTENANCE_SCHEDULE};
use crate::context::Ctx;
use crate::core::layout::Layout;
use crate::docker::ContainerInfo;
use crate::fs::durable;

/// One container's maintenance command.
#[derive(Clone, Debug)]
pub(crate) struct Task {
    /// Container name (the key of its history).
    pub container: String,
    pub id: String,
    pub command: String,
    /// Its schedule, or why the label cannot be used.
    pub cron: Result<Cron, String>,
}

impl Task {
    /// Key of its last run in `schedule.json`.
    pub(crate) fn key(&self) -> String {
        format!("maintenance:{}", self.container)
    }
}

/// The maintenance tasks of these (running) containers, by container name.
pub(crate) fn tasks(containers: &[ContainerInfo]) -> Vec<Task> {
    let mut out: Vec<Task> = containers
        .iter()
        .filter_map(|c| {
            let command = c.labels.get(LABEL_MAINTENANCE_EXEC)?.trim();
            if command.is_empty() {
                return None;
            }
            let cron = match c.labels.get(LABEL_MAINTENANCE_SCHEDULE) {
                Some(s) => parse_cron(s).map_err(|e| {
                    format!("container {}: label {LABEL_MAINTENANCE_SCHEDULE}: {e}", c.name)
                }),
                None => Err(format!(
                    "container {} has {LABEL_MAINTENANCE_EXEC} but no {LABEL_MAINTENANCE_SCHEDULE}=<cron>; add one (e.g. \"30 3 * * *\")",
                    c.name
                )),
            };
            Some(Task {
                container: c.name.clone(),
                id: c.id.clone(),
                command: command.to_string(),
                cron,
            })
        })
        .collect();
    out.sort_by(|a, b| a.container.cmp(&b.container));
    out
}

/// The tasks due now; tasks never seen get their baseline in `state` (pure).
pub(crate) fn due_tasks<'a, Z: TimeZone>(
    tasks: &'a [Task],
    state: &mut State,
    now: &DateTime<Z>,
) -> Vec<&'a Task> {
    let mut out = Vec::new();
    for t in tasks {
        let Ok(cron) = &t.cron else { continue };
        match state.last_run.get(&t.key()) {
            None => {
                state.last_run.insert(t.key(), now.with_timezone(&Utc));
            }
            Some(last) => {
                if cron::due(cron, Some(*last), now) {
                    out.push(t);
                }
            }
        }
    }
    out
}

/// Counts and last result of one container's maintenance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ContainerStats {
    pub command: String,
    pub ok: u64,
    pub failed: u64,
    pub last_finished_at: Option<DateTime<Utc>>,
    pub last_ok: bool,
    /// The last result: output tail on success, the failure sentence otherwise.
    pub last_result: String,
}

/// `maintenance.json`: container name -> stats.
pub(crate) type Stats = BTreeMap<String, ContainerStats>;

/// `<root>/state/agent/maintenance.json`.
pub(crate) fn stats_path(layout: &Layout) -> PathBuf {
    layout.agent_dir().join("maintenance.json")
}

/// The recorded stats (empty when absent or unreadable).
pub(crate) fn load_stats(layout: &Layout) -> Stats {
    std::fs::read(stats_path(layout))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Count one run of `container`'s `command` (atomically rewrites the file).
pub(crate) fn record(
    layout: &Layout,
    container: &str,
    command: &str,
    result: &Result<String, String>,
    at: DateTime<Utc>,
) -> anyhow::Result<()> {
    let mut stats = load_stats(layout);
    let s = stats.entry(container.to_string()).or_default();
    s.command = command.to_string();
    s.last_finished_at = Some(at);
    match result {
        Ok(out) => {
            s.ok += 1;
            s.last_ok = true;
            s.last_result = out.clone();
        }
        Err(e) => {
            s.failed += 1;
            s.last_ok = false;
            s.last_result = e.clone();
        }
    }
    let path = stats_path(layout);
    durable::ensure_dir(&layout.agent_dir(), 0o700)?;
    durable::atomic_write(&path, &serde_json::to_vec_pretty(&stats)?, 0o600)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Run one task now: `Ok(output tail)` when it exits 0, else a sentence.
pub(crate) fn run_task(ctx: &Ctx, task: &Task) -> Result<String, String> {
    let r = crate::docker::block_on(async {
        let docker = crate::docker::connect(&ctx.docker_url)
            .await
            .map_err(|e| format!("{e:#}"))?;
        crate::backup::dump::exec(&docker, &task.id, &task.command).await
    })
    .map_err(|e| format!("{e:#}"))?;
    let out = r?;
    let tail = |o: &crate::backup::dump::ExecOutcome| {
        [&o.stderr_tail, &o.stdout_tail]
            .iter()
            .filter(|t| !t.is_empty())
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    };
    match out.exit_code {
        Some(0) => Ok(tail(&out)),
        Some(c) => Err(format!(
            "`{}` in container {} exited with status {c}: {}",
            task.command,
            task.container,
            tail(&out)
        )),
        None => Err(format!(
            "`{}` in container {} did not report an exit status: {}",
            task.command,
            task.container,
            tail(&out)
        )),
    }
}

/// The scheduler's view of the maintenance tasks between two looks.
#[derive(Default)]
pub(crate) struct Maintainer {
    tasks: Vec<Task>,
    /// Label problems already logged (logged once, not every minute).
    warned: HashSet<String>,
}

impl Maintainer {
    /// List the labelled containers, run the due tasks, record them.
    pub(crate) fn run_due(&mut self, ctx: &Ctx, settings: &Settings) {
        let listed = crate::docker::block_on(async {
            let docker = crate::docker::connect(&ctx.docker_url).await?;
            crate::backup::run::running_containers(&docker, settings.container_label.as_ref()).await
        });
        let containers = match listed {
            Ok(Ok(c)) => c,
            Ok(Err(e)) | Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "cannot list containers for maintenance");
                return;
            }
        };
        self.tasks = tasks(&containers);
        for t in &self.tasks {
            if let Err(e) = &t.cron {
                if self.warned.insert(e.clone()) {
                    tracing::error!(container = %t.container, "{e}; its maintenance command does not run");
                }
            }
        }
        let mut state = cron::load_state(&ctx.layout);
        let known = state.last_run.len();
        let due: Vec<Task> = due_tasks(&self.tasks, &mut state, &Local::now())
            .into_iter()
            .cloned()
            .collect();
        if state.last_run.len() != known {
            if let Err(e) = cron::save_state(&ctx.layout, &state) {
                tracing::error!(error = %format!("{e:#}"), "cannot save the schedule state");
            }
        }
        for t in due {
            let started = Utc::now();
            tracing::info!(container = %t.container, command = %t.command, "maintenance command starting");
            let result = run_task(ctx, &t);
            let ms = (Utc::now() - started).num_milliseconds();
            match &result {
                Ok(out) => {
                    tracing::info!(container = %t.container, command = %t.command, ms, output = %out, "maintenance command done")
                }
                Err(e) => {
                    tracing::error!(container = %t.container, command = %t.command, ms, error = %e, "maintenance command FAILED")
                }
            }
            if let Err(e) = record(&ctx.layout, &t.container, &t.command, &result, Utc::now()) {
                tracing::error!(error = %format!("{e:#}"), "cannot record the maintenance result");
            }
            let mut state = cron::load_state(&ctx.layout);
            state.last_run.insert(t.key(), started);
            if let Err(e) = cron::save_state(&ctx.layout, &state) {
                tracing::error!(error = %format!("{e:#}"), "cannot save the schedule state");
            }
        }
    }

    /// The next due time of the tasks last seen.
    pub(crate) fn next_due<Z: TimeZone>(&self, now: &DateTime<Z>) -> Option<DateTime<Z>> {
        self.tasks
            .iter()
            .filter_map(|t| t.cron.as_ref().ok())
            .filter_map(|c| c.next_due(now))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn container(name: &str, labels: &[(&str, &str)]) -> ContainerInfo {
        ContainerInfo::fixture(name, labels)
    }

    #[test]
    fn labelled_containers_become_tasks_and_bad_labels_are_named() {
        let cs = vec![
            container(
                "db",
                &[
                    (LABEL_MAINTENANCE_EXEC, "vacuumdb -U postgres -a -z"),
                    (LABEL_MAINTENANCE_SCHEDULE, "30 3 * * *"),
                ],
            ),
            container("web", &[("other", "x")]),
            container("nosched", &[(LABEL_MAINTENANCE_EXEC, "true")]),
            container(
                "badsched",
                &[
                    (LABEL_MAINTENANCE_EXEC, "true"),
                    (LABEL_MAINTENANCE_SCHEDULE, "every day"),
                ],
            ),
        ];
        let ts = tasks(&cs);
        let names: Vec<&str> = ts.iter().map(|t| t.container.as_str()).collect();
        assert_eq!(names, ["badsched", "db", "nosched"]);
        assert_eq!(ts[1].command, "vacuumdb -U postgres -a -z");
        assert!(ts[1].cron.is_ok());
        let e = ts[2].cron.as_ref().unwrap_err();
        assert!(
            e.contains("nosched") && e.contains(LABEL_MAINTENANCE_SCHEDULE),
            "{e}"
        );
        let e = ts[0].cron.as_ref().unwrap_err();
        assert!(e.contains("badsched") && e.contains("5 fields"), "{e}");
    }

    #[test]
    fn a_task_gets_a_baseline_then_runs_at_each_due_time() {
        let cs = vec![container(
            "db",
            &[
                (LABEL_MAINTENANCE_EXEC, "vacuumdb -U postgres -a -z"),
                (LABEL_MAINTENANCE_SCHEDULE, "30 3 * * *"),
            ],
        )];
        let ts = tasks(&cs);
        let mut state = State::default();
        assert!(due_tasks(&ts, &mut state, &t("2024-05-30T12:00:00Z")).is_empty());
        assert_eq!(
            state.last_run.get("maintenance:db"),
            Some(&t("2024-05-30T12:00:00Z"))
        );
        assert!(due_tasks(&ts, &mut state, &t("2024-05-31T03:29:59Z")).is_empty());
        let due = due_tasks(&ts, &mut state, &t("2024-05-31T03:30:00Z"));
        assert_eq!(due.len(), 1);
        state
            .last_run
            .insert("maintenance:db".into(), t("2024-05-31T03:30:01Z"));
        assert!(due_tasks(&ts, &mut state, &t("2024-05-31T23:00:00Z")).is_empty());
        // Down for three days: once.
        assert_eq!(
            due_tasks(&ts, &mut state, &t("2024-06-03T09:00:00Z")).len(),
            1
        );
    }

    #[test]
    fn results_are_counted_per_container() {
        let d = tempfile::tempdir().unwrap();
        let layout = Layout::new(d.path());
        let now = t("2024-05-31T03:30:05Z");
        record(&layout, "db", "vacuumdb", &Ok("done".into()), now).unwrap();
        record(&layout, "db", "vacuumdb", &Err("exit 1".into()), now).unwrap();
        record(&layout, "db", "vacuumdb", &Ok("done".into()), now).unwrap();
        let s = load_stats(&layout);
        let db = &s["db"];
        assert_eq!((db.ok, db.failed, db.last_ok), (2, 1, true));
        assert_eq!(db.last_finished_at, Some(now));
    }
}
