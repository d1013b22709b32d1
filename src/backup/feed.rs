//! Which container a dump is fed to (its producer, or the operator's `--database NAME=CONTAINER`), and the note that makes a feed killed midway known to the next restore.

use std::path::PathBuf;

use anyhow::bail;
use serde::Serialize;

use super::manifest::Producer;
use super::{LABEL_RESTORE, LABEL_RESTORE_WAIT};
use crate::core::crashpoint::crash_point;
use crate::core::layout::Layout;
use crate::docker::ContainerInfo;

/// A dump to restore.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct PlannedDump {
    pub name: String,
    pub file: String,
    /// The container whose restore command reads it.
    pub container: Option<String>,
    #[serde(skip)]
    pub container_id: Option<String>,
    pub command: Option<String>,
    /// The readiness check run before it (`allspark.restore.wait`).
    pub wait: Option<String>,
    /// The container that wrote it (`None`: a manifest from before producers were recorded).
    pub producer: Option<Producer>,
    /// The container was chosen by the operator (`--database NAME=CONTAINER`), not matched.
    pub overridden: bool,
}

/// Split `--database` arguments (`NAME` or `NAME=CONTAINER`) into the dump names and the
/// overrides; a dump named twice is refused.
pub(crate) fn parse_database_args(
    args: &[String],
) -> anyhow::Result<(Vec<String>, std::collections::BTreeMap<String, String>)> {
    let mut names: Vec<String> = Vec::new();
    let mut targets = std::collections::BTreeMap::new();
    for a in args {
        let (name, target) = match a.split_once('=') {
            Some((n, c)) if !n.is_empty() && !c.is_empty() => (n, Some(c)),
            Some(_) => bail!(
                "--database {a:?}: expected NAME or NAME=CONTAINER (a dump name, and the running container to feed it to)"
            ),
            None => (a.as_str(), None),
        };
        if names.iter().any(|n| n == name) {
            bail!("--database names dump {name} twice; give each dump once");
        }
        names.push(name.to_string());
        if let Some(t) = target {
            targets.insert(name.to_string(), t.to_string());
        }
    }
    Ok((names, targets))
}

/// Feed dump `d` to container `c` (its restore command and readiness check from its labels).
pub(super) fn take_hook(d: &mut PlannedDump, c: &ContainerInfo) {
    d.container = Some(c.name.clone());
    d.container_id = Some(c.id.clone());
    d.command = c.labels.get(LABEL_RESTORE).cloned();
    d.wait = c
        .labels
        .get(LABEL_RESTORE_WAIT)
        .filter(|w| !w.trim().is_empty())
        .cloned();
}

/// The container an operator named for dump `name` (`--database NAME=CONTAINER`, by name or
/// id): it must exist, run, and carry a restore command. Its dump name and producer are not
/// compared: naming it is the operator's decision.
pub(crate) fn chosen_hook<'a>(
    name: &str,
    target: &str,
    all: &'a [ContainerInfo],
) -> Result<&'a ContainerInfo, String> {
    let wanted = target.trim_start_matches('/');
    let c = all
        .iter()
        .find(|c| c.name == wanted || c.id == wanted)
        .or_else(|| {
            let mut by_prefix = all
                .iter()
                .filter(|c| wanted.len() >= 12 && c.id.starts_with(wanted));
            by_prefix.next().filter(|_| by_prefix.next().is_none())
        })
        .ok_or_else(|| {
            format!("--database {name}={target}: there is no container {target} (`docker ps -a`); name an existing container")
        })?;
    if !c.running {
        return Err(format!(
            "--database {name}={target}: container {} is not running; start it and restore again",
            c.name
        ));
    }
    if c.labels
        .get(LABEL_RESTORE)
        .is_none_or(|v| v.trim().is_empty())
    {
        return Err(format!(
            "--database {name}={target}: container {} has no {LABEL_RESTORE}=<command> label, so allspark does not know how to feed it a dump; recreate it with that label (e.g. {LABEL_RESTORE}=\"psql -U postgres\")",
            c.name
        ));
    }
    Ok(c)
}

/// Of the running containers taking dump `name` (by dump name), those its recorded producer allows.
///
/// Without a recorded producer (a manifest from before allspark recorded
/// them) every candidate is kept: the dump name alone decides, as it did.
/// With one, only a container of the same identity ([`Producer::matches`]);
/// when candidates exist but none matches, the refusal names each mismatch.
pub(crate) fn select_hook<'a>(
    name: &str,
    producer: Option<&Producer>,
    candidates: &[&'a ContainerInfo],
) -> Result<Vec<&'a ContainerInfo>, String> {
    let Some(p) = producer else {
        return Ok(candidates.to_vec());
    };
    let mut mismatches = Vec::new();
    let mut ok = Vec::new();
    for c in candidates {
        match p.matches(&Producer::of(c)) {
            Ok(()) => ok.push(*c),
            Err(e) => mismatches.push(e),
        }
    }
    if ok.is_empty() && !mismatches.is_empty() {
        return Err(format!(
            "dump {name} is refused: {}; it is fed only to the container that wrote it (same compose project and service, else same name)",
            mismatches.join("; ")
        ));
    }
    Ok(ok)
}

/// Where a dump being fed is noted (`<root>/state/agent/feeding-<name>.json`): written before
/// the feed, removed after it, so a restore killed mid-feed is known to the next one.
fn feed_journal(layout: &Layout, name: &str) -> PathBuf {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    layout.agent_dir().join(format!("feeding-{safe}.json"))
}

/// Run `feed` under the dump's journal. A journal left by an interrupted feed refuses: the
/// database may hold part of the dump, and a dump is never replayed blindly.
pub(super) fn fed_once(
    layout: &Layout,
    d: &PlannedDump,
    feed: impl FnOnce() -> Result<String, String>,
) -> Result<String, String> {
    let journal = feed_journal(layout, &d.name);
    if let Ok(text) = std::fs::read_to_string(&journal) {
        return Err(format!(
            "an earlier restore was killed while it fed dump {} ({}), so that database may hold part of it; check it (or restore its volume first), then delete {} and restore the dump again",
            d.name,
            text.trim(),
            journal.display()
        ));
    }
    let note = serde_json::json!({
        "dump": d.name,
        "container": d.container,
        "started_at": chrono::Utc::now().to_rfc3339(),
    });
    crate::fs::durable::ensure_dir(&layout.agent_dir(), 0o700)
        .and_then(|()| {
            crate::fs::durable::atomic_write(&journal, note.to_string().as_bytes(), 0o600)
        })
        .map_err(|e| {
            format!(
                "cannot write {}: {e}; the dump was not fed",
                journal.display()
            )
        })?;
    crash_point("restore.dump-journaled");
    let r = feed();
    // Fed (or failed, and reported as such): the next restore may feed it again.
    if let Err(e) = crate::fs::durable::remove_durable(&journal) {
        tracing::error!(path = %journal.display(), %e, "cannot remove the note of a finished dump restore");
    }
    crash_point("restore.dump-fed");
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn database_arguments_name_a_dump_once_and_optionally_its_container() {
        let (names, targets) = parse_database_args(&args(&["db", "cache=redis-new"])).unwrap();
        assert_eq!(names, ["db", "cache"]);
        assert_eq!(targets.len(), 1);
        assert_eq!(targets["cache"], "redis-new");
        let e = parse_database_args(&args(&["db", "db=other"])).unwrap_err();
        assert!(e.to_string().contains("names dump db twice"), "{e}");
        for bad in ["=c", "db=", "="] {
            let e = parse_database_args(&args(&[bad])).unwrap_err();
            assert!(e.to_string().contains("NAME=CONTAINER"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_chosen_container_must_exist_run_and_have_a_restore_command() {
        let good = ContainerInfo::fixture("pg-new", &[(LABEL_RESTORE, "psql -U postgres")]);
        let mut stopped = ContainerInfo::fixture("pg-stopped", &[(LABEL_RESTORE, "psql")]);
        stopped.running = false;
        let plain = ContainerInfo::fixture("plain", &[]);
        let all = [good.clone(), stopped, plain];
        assert_eq!(chosen_hook("db", "pg-new", &all).unwrap().name, "pg-new");
        assert_eq!(chosen_hook("db", &good.id, &all).unwrap().name, "pg-new");
        let e = chosen_hook("db", "ghost", &all).unwrap_err();
        assert!(e.contains("there is no container ghost"), "{e}");
        let e = chosen_hook("db", "pg-stopped", &all).unwrap_err();
        assert!(e.contains("pg-stopped is not running"), "{e}");
        let e = chosen_hook("db", "plain", &all).unwrap_err();
        assert!(e.contains("plain has no allspark.restore.exec"), "{e}");
    }
}
