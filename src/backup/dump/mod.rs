//! Commands exec'd in containers through the Docker API: dumps (stdout gzipped into a file), restore hooks (a file gunzipped into stdin), readiness and maintenance commands; exit codes and stderr checked.
//!
//! A dump whose command exits non-zero, whose exit code cannot be read, or
//! which writes nothing on stdout is an error: never a silent empty dump.
//! A restore command fails when it exits non-zero, or when it exits 0 but
//! wrote error lines on stderr (`ERROR:`, `FATAL:`, `PANIC:`: a `psql`
//! without `ON_ERROR_STOP` goes on after a failed statement and exits 0);
//! every such line is kept for the report. Commands' stderr goes to the log
//! (and its tail into the error).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::Docker;
use flate2::write::GzEncoder;
use flate2::Compression;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

mod stderr;

use self::stderr::{Stderr, STDERR_TAIL};

/// What a dump produced.
#[derive(Clone, Debug, Default)]
pub(crate) struct DumpResult {
    /// Size of the `.sql.gz` file.
    pub size: u64,
    /// sha256 of the `.sql.gz` file.
    pub sha256: String,
    /// Uncompressed bytes the command wrote.
    pub bytes_in: u64,
}

/// Counts and hashes what goes through.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Create and start `sh -c <command>` in container `who`, attached: the exec's id, its output
/// stream and its stdin. `what` names the command in errors, `attached` what must be attached.
async fn start_attached(
    docker: &Docker,
    who: &str,
    command: &str,
    stdin: bool,
    output_capacity: usize,
    what: &str,
    attached: &str,
) -> Result<
    (
        String,
        impl futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Unpin,
        impl tokio::io::AsyncWrite + Unpin,
    ),
    String,
> {
    let exec = create(docker, who, command, stdin)
        .await
        .map_err(|e| format!("cannot run {what} in container {who}: {e}"))?;
    let started = docker
        .start_exec(
            &exec,
            Some(StartExecOptions {
                detach: false,
                tty: false,
                output_capacity: Some(output_capacity),
            }),
        )
        .await
        .map_err(|e| format!("cannot start {what} in container {who}: {e}"))?;
    let StartExecResults::Attached { output, input } = started else {
        return Err(format!(
            "{what} in container {who} did not attach its {attached}"
        ));
    };
    Ok((exec, output, input))
}

async fn create(
    docker: &Docker,
    container: &str,
    command: &str,
    stdin: bool,
) -> Result<String, bollard::errors::Error> {
    let exec = docker
        .create_exec(
            container,
            CreateExecOptions {
                attach_stdin: Some(stdin),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(false),
                cmd: Some(vec!["sh", "-c", command]),
                ..Default::default()
            },
        )
        .await?;
    Ok(exec.id)
}

/// Wait for the exec to be over and return its exit code (`None` if Docker does not say).
async fn exit_code(docker: &Docker, exec: &str) -> Result<Option<i64>, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = docker
            .inspect_exec(exec)
            .await
            .map_err(|e| format!("cannot read the exit code of the command ({e})"))?;
        if info.running != Some(true) || Instant::now() >= deadline {
            return Ok(info.exit_code);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Run the dump command of `who` (container id or name) and write its stdout gzipped to `dest` (via a temp name, fsynced).
pub(crate) async fn dump_to_file(
    docker: &Docker,
    who: &str,
    command: &str,
    dest: &Path,
) -> Result<DumpResult, String> {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dest.with_file_name(format!(".{name}.partial"));
    let result = dump_inner(docker, who, command, &tmp).await;
    match result {
        Ok(r) => {
            fs::rename(&tmp, dest).map_err(|e| {
                format!("cannot move the dump into place as {}: {e}", dest.display())
            })?;
            Ok(r)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// The gzipped, hashed file a dump is written into.
type DumpWriter = GzEncoder<HashingWriter<BufWriter<File>>>;

async fn dump_inner(
    docker: &Docker,
    who: &str,
    command: &str,
    tmp: &Path,
) -> Result<DumpResult, String> {
    let mut gz = create_dump_file(tmp)?;
    let (exec, output, _) = start_attached(
        docker,
        who,
        command,
        false,
        1 << 20,
        "the dump command",
        "output",
    )
    .await?;
    let (bytes_in, tail) = write_dump_output(who, output, &mut gz, tmp).await?;
    let code = exit_code(docker, &exec).await?;
    match code {
        Some(0) => {}
        Some(c) => {
            return Err(format!(
                "the dump command `{command}` in container {who} exited with status {c}{tail}; fix the command or the database, the backup has no dump of it"
            ))
        }
        None => {
            return Err(format!(
                "the dump command `{command}` in container {who} did not report an exit status{tail}; the dump cannot be trusted"
            ))
        }
    }
    if bytes_in == 0 {
        return Err(format!(
            "the dump command `{command}` in container {who} wrote nothing on stdout{tail}; an empty dump is refused"
        ));
    }
    finish_dump_file(gz, tmp, bytes_in)
}

/// Create `tmp` (mode 0600) behind a gzip encoder and a hasher.
fn create_dump_file(tmp: &Path) -> Result<DumpWriter, String> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)
        .map_err(|e| {
            format!(
                "cannot create {}: {e}; check the backup root",
                tmp.display()
            )
        })?;
    let hashing = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        count: 0,
    };
    Ok(GzEncoder::new(hashing, Compression::new(6)))
}

/// Write the command's stdout into the dump file, its stderr to the log: the bytes it wrote and
/// its stderr tail (`; its stderr ends with: …`, or empty).
async fn write_dump_output(
    who: &str,
    mut output: impl futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Unpin,
    gz: &mut DumpWriter,
    tmp: &Path,
) -> Result<(u64, String), String> {
    let mut stderr = Stderr::default();
    let mut bytes_in = 0u64;
    let mut write_error = None;
    while let Some(item) = output.next().await {
        match item {
            Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                bytes_in += message.len() as u64;
                if write_error.is_none() {
                    if let Err(e) = gz.write_all(&message) {
                        write_error = Some(e);
                        break;
                    }
                }
            }
            Ok(LogOutput::StdErr { message }) => stderr.push(who, &message),
            Ok(LogOutput::StdIn { .. }) => {}
            Err(e) => {
                return Err(format!(
                    "reading the output of the dump command in container {who} failed: {e}{}",
                    stderr.finish(who)
                ))
            }
        }
    }
    let tail = stderr.finish(who);
    if let Some(e) = write_error {
        return Err(format!(
            "cannot write the dump to {}: {e}; check free space where backups are written",
            tmp.display()
        ));
    }
    Ok((bytes_in, tail))
}

/// Finish the gzip stream and fsync the file: its size and sha256.
fn finish_dump_file(gz: DumpWriter, tmp: &Path, bytes_in: u64) -> Result<DumpResult, String> {
    let hashing = gz
        .finish()
        .map_err(|e| format!("cannot finish {}: {e}", tmp.display()))?;
    let HashingWriter {
        inner,
        hasher,
        count,
    } = hashing;
    let file = inner
        .into_inner()
        .map_err(|e| format!("cannot write {}: {}", tmp.display(), e.error()))?;
    file.sync_all()
        .map_err(|e| format!("cannot sync {}: {e}", tmp.display()))?;
    Ok(DumpResult {
        size: count,
        sha256: hex::encode(hasher.finalize()),
        bytes_in,
    })
}

/// What a restore command did.
#[derive(Debug, Default)]
pub(crate) struct FeedOutcome {
    /// Bytes written to its stdin.
    pub fed: u64,
    /// Its exit code (`None`: Docker did not say).
    pub exit_code: Option<i64>,
    /// Error lines of its stderr (at most 20), in order.
    pub errors: Vec<String>,
    /// How many error lines there were in all.
    pub error_count: usize,
    /// `; its stderr ends with: …`, or empty.
    pub tail: String,
    /// Feeding the input failed (the dump could not be read, or the command stopped reading).
    pub input_error: Option<String>,
}

impl FeedOutcome {
    /// Exit 0, everything fed, no error line.
    pub(crate) fn ok(&self) -> bool {
        self.exit_code == Some(0) && self.input_error.is_none() && self.error_count == 0
    }
}

/// Run `sh -c <command>` in container `who` with `input` on its stdin, close stdin, wait for its exit code.
/// `Err` only when the command could not be run at all; what it did is in the [`FeedOutcome`].
pub(crate) async fn feed_stdin<R: Read>(
    docker: &Docker,
    who: &str,
    command: &str,
    mut input: R,
) -> Result<FeedOutcome, String> {
    let (exec, mut output, mut stdin) = start_attached(
        docker,
        who,
        command,
        true,
        64 << 10,
        &format!("`{command}`"),
        "input",
    )
    .await?;
    // Docker keeps an exec's stdin open after the process exits: a command that stops
    // early (psql with ON_ERROR_STOP) would leave the writer blocked for minutes. The
    // writer and the reader therefore give up a little after the process is gone.
    let fed = std::cell::Cell::new(0u64);
    let err = std::cell::RefCell::new(Stderr::default());
    let write = write_input(&mut input, &mut stdin, &fed);
    let read = read_output(who, &mut output, &err);
    let gone = |grace: Duration| exec_gone(docker, &exec, grace);
    let writer = async {
        tokio::select! {
            r = write => r,
            _ = gone(Duration::from_secs(2)) => Some(format!(
                "it exited before reading all its input ({} bytes fed)",
                fed.get()
            )),
        }
    };
    let reader = async {
        tokio::select! {
            () = read => {},
            _ = gone(Duration::from_secs(5)) => {},
        }
    };
    let (input_error, ()) = tokio::join!(writer, reader);
    let mut err = err.into_inner();
    let tail = err.finish(who);
    let exit_code = exit_code(docker, &exec).await?;
    Ok(FeedOutcome {
        fed: fed.get(),
        exit_code,
        errors: err.errors,
        error_count: err.error_count,
        tail,
        input_error,
    })
}

/// Copy `input` into the command's stdin, then close it: `Some(why)` when that failed.
async fn write_input<R: Read>(
    input: &mut R,
    stdin: &mut (impl tokio::io::AsyncWrite + Unpin),
    fed: &std::cell::Cell<u64>,
) -> Option<String> {
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = stdin.shutdown().await;
                return Some(format!(
                    "cannot read the dump after {total} bytes: {e}; the backup file is damaged"
                ));
            }
        };
        if let Err(e) = stdin.write_all(&buf[..n]).await {
            return Some(format!(
                "it stopped reading its input after {total} bytes ({e})"
            ));
        }
        total += n as u64;
        fed.set(total);
    }
    match stdin.shutdown().await {
        Ok(()) => None,
        Err(e) => Some(format!("cannot close its input: {e}")),
    }
}

/// Read the command's output until it ends: stderr kept in `err`, stdout to the debug log.
async fn read_output(
    who: &str,
    output: &mut (impl futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Unpin),
    err: &std::cell::RefCell<Stderr>,
) {
    while let Some(item) = output.next().await {
        match item {
            Ok(LogOutput::StdErr { message }) => err.borrow_mut().push(who, &message),
            Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                tracing::debug!(container = who, stdout = %String::from_utf8_lossy(&message).trim_end(), "restore command output")
            }
            Ok(LogOutput::StdIn { .. }) => {}
            Err(e) => {
                tracing::warn!(container = who, %e, "reading the output of the restore command failed");
                break;
            }
        }
    }
}

/// Returns `grace` after the exec stopped running (or can no longer be inspected).
async fn exec_gone(docker: &Docker, exec: &str, grace: Duration) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match docker.inspect_exec(exec).await {
            Ok(i) if i.running == Some(true) => {}
            _ => break,
        }
    }
    tokio::time::sleep(grace).await;
}

/// What a command exec'd without input did (readiness checks, maintenance).
#[derive(Debug, Default)]
pub(crate) struct ExecOutcome {
    pub exit_code: Option<i64>,
    /// The last bytes of stdout and stderr, as text.
    pub stdout_tail: String,
    pub stderr_tail: String,
}

impl ExecOutcome {
    pub(crate) fn ok(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// Run `sh -c <command>` in container `who`, wait for it, and return its exit code and output tails.
/// `Err` only when the command could not be run at all (e.g. the container is not running).
pub(crate) async fn exec(docker: &Docker, who: &str, command: &str) -> Result<ExecOutcome, String> {
    let (exec, mut output, _) = start_attached(
        docker,
        who,
        command,
        false,
        64 << 10,
        &format!("`{command}`"),
        "output",
    )
    .await?;
    let mut err = Stderr::default();
    let mut out: Vec<u8> = Vec::new();
    while let Some(item) = output.next().await {
        match item {
            Ok(LogOutput::StdErr { message }) => err.push(who, &message),
            Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                out.extend_from_slice(&message);
                if out.len() > STDERR_TAIL {
                    let cut = out.len() - STDERR_TAIL;
                    out.drain(..cut);
                }
            }
            Ok(LogOutput::StdIn { .. }) => {}
            Err(e) => {
                tracing::warn!(container = who, %e, "reading the output of a command failed");
                break;
            }
        }
    }
    err.finish(who);
    let exit_code = exit_code(docker, &exec).await?;
    Ok(ExecOutcome {
        exit_code,
        stdout_tail: String::from_utf8_lossy(&out).trim().to_string(),
        stderr_tail: String::from_utf8_lossy(&err.tail).trim().to_string(),
    })
}

/// Size and sha256 of a file (for checks).
pub(crate) fn file_sum(path: &Path) -> io::Result<(u64, String)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let n = io::copy(&mut f, &mut h)?;
    Ok((n, hex::encode(h.finalize())))
}
