//! The containers of a run: those labelled `allspark.backup.stop=true` recorded, then stopped (a database container right after its dump); each running container with a dump label dumped into `<name>.sql.gz`, with the volumes its dump stands for.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use bollard::Docker;
use tokio::runtime::Runtime;

use super::{dump_name, duplicate_dump_names, Run};
use crate::backup::dump;
use crate::backup::manifest::{BackupManifest, FileEntry, FileKind, Producer};
use crate::backup::quiesce::StopGuard;
use crate::backup::{LABEL_DUMP, LABEL_NAME, LABEL_STOP};
use crate::core::options::Compression;
use crate::docker::ContainerInfo;

impl Run<'_> {
    /// Stop the containers labelled `allspark.backup.stop=true` (recorded first) and dump each
    /// container of `to_dump`; the guard returned starts the stopped ones again.
    pub(super) fn stop_and_dump<'r>(
        &mut self,
        rt: &'r Runtime,
        docker: &Docker,
        containers: &[ContainerInfo],
        to_dump: &[&ContainerInfo],
        coverage: &BTreeMap<String, (String, String)>,
    ) -> StopGuard<'r> {
        // Refused before any dump runs: every container whose dump name another one also has.
        let refused = refused_duplicates(to_dump);
        let to_stop: Vec<&ContainerInfo> = if self.kind.dumps_only() {
            Vec::new()
        } else {
            containers
                .iter()
                .filter(|c| c.labels.get(LABEL_STOP).map(|v| v.trim()) == Some("true"))
                .collect()
        };
        let kind = self.kind;
        let mut g = StopGuard::new(&self.ctx.layout, rt, docker, &format!("backup {kind}"));
        let stoppable = self.stop_labelled(&mut g, &to_stop, to_dump);
        for c in to_dump {
            self.dump_one(rt, docker, c, coverage, refused.get(&c.id));
            if stoppable && to_stop.iter().any(|s| s.id == c.id) {
                self.stop(&g, c);
            }
        }
        g
    }

    /// Record the containers to stop, then stop those without a dump label; `false` when the
    /// record failed (none is stopped then).
    fn stop_labelled(
        &mut self,
        g: &mut StopGuard,
        to_stop: &[&ContainerInfo],
        to_dump: &[&ContainerInfo],
    ) -> bool {
        let mut stoppable = true;
        if !to_stop.is_empty() {
            let owned: Vec<ContainerInfo> = to_stop.iter().map(|c| (*c).clone()).collect();
            if let Err(e) = g.record(&owned) {
                self.m.errors.push(format!(
                    "{e:#}; containers labelled {LABEL_STOP}=true were left running"
                ));
                stoppable = false;
            }
        }
        let is_dumped = |c: &ContainerInfo| to_dump.iter().any(|d| d.id == c.id);
        if stoppable {
            for c in to_stop.iter().filter(|c| !is_dumped(c)) {
                self.stop(g, c);
            }
        }
        stoppable
    }

    /// Stop one container, into the manifest's stopped containers or its errors.
    fn stop(&mut self, g: &StopGuard, c: &ContainerInfo) {
        match g.stop(c) {
            Ok(()) => self.m.stopped_containers.push(c.name.clone()),
            Err(e) => self.m.errors.push(e),
        }
    }

    /// Dump container `c` (unless `refused` says why not) into the manifest; a failed dump
    /// also names each volume it stood for, which then has no copy.
    fn dump_one(
        &mut self,
        rt: &Runtime,
        docker: &Docker,
        c: &ContainerInfo,
        coverage: &BTreeMap<String, (String, String)>,
        refused: Option<&String>,
    ) {
        let m = &mut self.m;
        let name = dump_name(c);
        let cmd = c.labels.get(LABEL_DUMP).cloned().unwrap_or_default();
        let covers: Vec<String> = coverage
            .iter()
            .filter(|(_, (_, id))| *id == c.id)
            .map(|(v, _)| v.clone())
            .collect();
        if let Some(p) = &self.opts.progress {
            p(&format!("dump {name}"), Some(0));
        }
        let result = match refused {
            Some(why) => Err(format!("container {}: {why}", c.name)),
            None => do_dump(rt, docker, c, &name, &cmd, self.dir, m),
        };
        match result {
            Ok(mut entry) => {
                tracing::info!(dump = %name, container = %c.name, bytes = entry.bytes_in, covers = ?covers, "database dumped");
                for v in &covers {
                    m.covered_by_dump.insert(v.clone(), name.clone());
                }
                entry.covers = covers;
                m.databases.push(name.clone());
                m.files.push(entry);
            }
            Err(e) => {
                m.errors.push(e);
                if !self.kind.dumps_only() {
                    for v in &covers {
                        m.errors.push(format!(
                            "volume {v} has no copy in this backup: it belongs to the running database container {}, whose dump failed (above), and the files of a running database are not archived; fix the dump and run the backup again",
                            c.name
                        ));
                    }
                }
            }
        }
        if let Some(p) = &self.opts.progress {
            p(&format!("dump {name}"), None);
        }
    }
}

/// Container id -> why its dump is refused, for every container whose dump name another one also has.
fn refused_duplicates(to_dump: &[&ContainerInfo]) -> HashMap<String, String> {
    let mut refused: HashMap<String, String> = Default::default();
    for (name, cs) in duplicate_dump_names(to_dump) {
        let why = format!(
            "dump {name} refused: containers {} all have dump name {name} (label {LABEL_NAME}, else the container name), so neither is dumped; give each a distinct {LABEL_NAME} label",
            cs.join(" and ")
        );
        for c in to_dump.iter().filter(|c| cs.contains(&c.name)) {
            refused.insert(c.id.clone(), why.clone());
        }
    }
    refused
}

fn do_dump(
    rt: &tokio::runtime::Runtime,
    docker: &Docker,
    c: &ContainerInfo,
    name: &str,
    cmd: &str,
    dir: &Path,
    m: &BackupManifest,
) -> Result<FileEntry, String> {
    crate::core::names::validate(name).map_err(|e| {
        format!(
            "container {}: its dump name is not usable as a file name ({e}); set the label {LABEL_NAME} to a plain name",
            c.name
        )
    })?;
    let file = format!("{name}.sql.gz");
    if m.file(&file).is_some() {
        return Err(format!(
            "container {}: another container's dump is already called {name}; give each a distinct {LABEL_NAME} label",
            c.name
        ));
    }
    let r = rt
        .block_on(dump::dump_to_file(docker, &c.id, cmd, &dir.join(&file)))
        .map_err(|e| format!("dump {name} (container {}): {e}", c.name))?;
    Ok(FileEntry {
        name: file,
        kind: FileKind::Database,
        size: r.size,
        sha256: r.sha256,
        source: name.to_string(),
        options: Default::default(),
        bytes_in: r.bytes_in,
        compression: Compression::Gzip,
        covers: Vec::new(),
        producer: Some(Producer::of(c)),
    })
}
