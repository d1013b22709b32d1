//! A dump fed to its restore command: wait until the container runs and passes its readiness check, feed the gunzipped dump once, and explain a failure (each error line, and for `psql` the failing statement read back from the dump).

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::Docker;
use flate2::read::MultiGzDecoder;

use super::{PlannedDump, READY_TIMEOUT};
use crate::backup::LABEL_RESTORE_WAIT;

/// Wait until container `id` runs and passes its readiness check, then feed it the dump once.
pub(super) async fn restore_dump(
    docker: &Docker,
    dir: &Path,
    d: &PlannedDump,
    id: &str,
    cmd: &str,
) -> Result<String, String> {
    let who = d.container.as_deref().unwrap_or(id);
    let deadline = Instant::now() + READY_TIMEOUT;
    wait_ready(docker, id, who, d.wait.as_deref(), deadline).await?;
    let path = dir.join(&d.file);
    let f = File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let input = MultiGzDecoder::new(BufReader::with_capacity(1 << 20, f));
    let out = crate::backup::dump::feed_stdin(docker, id, cmd, input).await?;
    if out.ok() {
        return Ok(format!(
            "{} bytes of SQL fed to `{cmd}` in container {who}: exit 0, no error reported",
            out.fed
        ));
    }
    Err(describe_failure(&path, &d.file, cmd, who, &out))
}

/// Wait until the container runs (not restarting) and its `wait` command, if any, exits 0.
async fn wait_ready(
    docker: &Docker,
    id: &str,
    who: &str,
    wait: Option<&str>,
    deadline: Instant,
) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let state = docker
            .inspect_container(id, None)
            .await
            .map_err(|e| format!("container {who} cannot be inspected ({e}); is it still there?"))?
            .state
            .unwrap_or_default();
        if state.running == Some(true) && state.restarting != Some(true) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "container {who} is not running {} s after the restore started (status {:?}); see `docker logs {who}`",
                READY_TIMEOUT.as_secs(),
                state.status
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let Some(wait) = wait else {
        return Ok(());
    };
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let last = match crate::backup::dump::exec(docker, id, wait).await {
            Ok(o) if o.ok() => {
                tracing::info!(
                    container = who,
                    attempts,
                    waited_ms = started.elapsed().as_millis() as u64,
                    "database ready for the restore"
                );
                return Ok(());
            }
            Ok(o) => format!(
                "exit status {}{}",
                o.exit_code.map_or("unknown".into(), |c| c.to_string()),
                [o.stderr_tail, o.stdout_tail]
                    .iter()
                    .find(|t| !t.is_empty())
                    .map(|t| format!(", output: {t}"))
                    .unwrap_or_default()
            ),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "container {who} was not ready within {} s: its {LABEL_RESTORE_WAIT} check `{wait}` failed {attempts} time(s), last with {last}; the dump was not fed",
                READY_TIMEOUT.as_secs()
            ));
        }
        tracing::info!(container = who, check = wait, result = %last, "waiting for the database to accept connections");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The sentence of a failed restore command: its status, each error line, and the statements they name.
fn describe_failure(
    path: &Path,
    file: &str,
    cmd: &str,
    who: &str,
    out: &crate::backup::dump::FeedOutcome,
) -> String {
    let mut s = match out.exit_code {
        Some(0) => format!(
            "`{cmd}` in container {who} exited 0 but reported {} error(s) on stderr: it went on after a failed statement (give psql `-v ON_ERROR_STOP=1`)",
            out.error_count
        ),
        Some(c) => format!("`{cmd}` in container {who} exited with status {c}"),
        None => format!("`{cmd}` in container {who} did not report an exit status"),
    };
    if let Some(e) = &out.input_error {
        s += &format!(" ({e})");
    }
    if out.errors.is_empty() {
        s += &out.tail;
        return s;
    }
    let lines: Vec<u64> = out.errors.iter().filter_map(|e| psql_line(e)).collect();
    let statements = statements_at(path, &lines);
    for e in &out.errors {
        s += &format!("; {e}");
        if let Some(st) = psql_line(e).and_then(|n| statements.get(&n)) {
            s += &format!(
                " [failing statement, line {} of {file}: {st}]",
                psql_line(e).unwrap_or_default()
            );
        }
    }
    if out.error_count > out.errors.len() {
        s += &format!(
            "; … and {} more error line(s)",
            out.error_count - out.errors.len()
        );
    }
    if out.fed > 0 {
        s += "; the statements before the error were applied (the database is partly restored)";
    }
    s
}

/// The script line a `psql` error names: `psql:<stdin>:24: ERROR:  …` → 24.
pub(crate) fn psql_line(error: &str) -> Option<u64> {
    let rest = error.trim_start().strip_prefix("psql:")?;
    let mut parts = rest.splitn(3, ':');
    let _source = parts.next()?;
    parts.next()?.trim().parse().ok()
}

/// The statements ending at `lines` (1-based) of a gzipped SQL file: the lines since the previous
/// `;`-terminated one (at most 10; else the line alone), whitespace collapsed, cut at 300 characters.
pub(crate) fn statements_at(path: &Path, lines: &[u64]) -> std::collections::HashMap<u64, String> {
    use std::io::BufRead;
    let mut out = std::collections::HashMap::new();
    let Some(&last) = lines.iter().max() else {
        return out;
    };
    let Ok(f) = File::open(path) else {
        return out;
    };
    let reader = BufReader::new(MultiGzDecoder::new(BufReader::new(f)));
    let mut pending: Vec<String> = Vec::new();
    for (i, line) in reader.split(b'\n').enumerate() {
        let n = i as u64 + 1;
        let Ok(bytes) = line else { break };
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let ends = text.trim_end().ends_with(';');
        let noise = text.trim().is_empty() || text.trim_start().starts_with("--");
        if !noise || lines.contains(&n) {
            pending.push(text);
        }
        if pending.len() > 10 {
            pending.remove(0);
        }
        if lines.contains(&n) {
            let shown: &[String] = if pending.len() < 10 {
                &pending
            } else {
                &pending[pending.len() - 1..]
            };
            let joined = shown
                .iter()
                .flat_map(|l| l.split_whitespace())
                .collect::<Vec<_>>()
                .join(" ");
            let cut: String = joined.chars().take(300).collect();
            out.insert(
                n,
                if cut.len() < joined.len() {
                    format!("{cut}…")
                } else {
                    cut
                },
            );
        }
        if ends {
            pending.clear();
        }
        if n >= last {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn psql_errors_name_their_line() {
        assert_eq!(
            psql_line("psql:<stdin>:24: ERROR:  current user cannot be dropped"),
            Some(24)
        );
        assert_eq!(psql_line("psql:/tmp/x.sql:7: FATAL:  boom"), Some(7));
        assert_eq!(psql_line("ERROR:  no line"), None);
        assert_eq!(psql_line("psql: error: connection failed"), None);
    }

    #[test]
    fn the_failing_statement_is_read_back_from_the_dump() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("db.sql.gz");
        let sql = "SET x = 1;\n--\n-- Name: t; Type: TABLE; Schema: public\n--\n\nCREATE TABLE public.t (\n    id integer NOT NULL\n);\nDROP ROLE IF EXISTS postgres;\nCOPY public.t (id) FROM stdin;\n1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n\\.\n";
        let mut gz = flate2::write::GzEncoder::new(
            File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        gz.write_all(sql.as_bytes()).unwrap();
        gz.finish().unwrap();
        let got = statements_at(&path, &[8, 9, 21]);
        assert_eq!(
            got[&8], "CREATE TABLE public.t ( id integer NOT NULL );",
            "comments and blank lines are left out"
        );
        assert_eq!(got[&9], "DROP ROLE IF EXISTS postgres;");
        assert_eq!(got[&21], "11", "deep in COPY data: the line alone");
        assert!(statements_at(&path, &[]).is_empty());
    }
}
