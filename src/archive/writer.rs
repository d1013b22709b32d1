//! Tree -> tar writer: what each entry of the walk becomes in the archive, never aborting on live data, with incremental support.
//!
//! The tree is walked by [`crate::fs::walk`] (descriptor-relative, never
//! following a symlink, directories scanned ahead in parallel, one
//! deterministic order). An incremental decides from the walk's lstat alone,
//! merged against the parent index in tree order, whether a file changed:
//! unchanged files are neither opened nor read. Per-file state kept in memory
//! is the new [`Index`] and the hard-link map; everything else streams. The tar
//! framing itself is in [`super::tar_out`].
//!
//! Live data: a file that vanishes between listing and opening is skipped
//! (`vanished`); a file whose size differs from what was stat'ed when it was
//! opened is stored with exactly the stat'ed size (zero-padded or cut) and
//! counted in `changed_during_walk`. Entries that cannot be read are listed in
//! `problems`. Only an error writing the output aborts.

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::sys::stat::{fstat, FileStat};

use super::compress::ParallelWriter;
use super::entries::Writer;
use super::index::kind_of;
use super::read_ahead::{Ahead, ReadAhead};
use super::tar_out::TarOut;
use super::{ArchiveError, EntryKind};
use crate::fs::walk;

use super::write_options::{WriteOptions, WriteReport};

/// Write the tree at `src` as an uncompressed tar stream to `out`.
///
/// Errors only if `src` cannot be opened as a directory or writing to `out`
/// fails; everything else is counted in the report.
pub fn write_tree<W: Write>(
    src: &Path,
    out: W,
    opts: &WriteOptions,
) -> Result<WriteReport, ArchiveError> {
    let (report, _out) = write_tree_inner(src, out, opts)?;
    Ok(report)
}

/// Write the tree at `src` as a tar compressed in parallel (the codec of
/// `opts.compression`) to `out_file`, then fsync the file. The report
/// carries the compression statistics (including the sha256 of the file).
pub fn write_archive(
    src: &Path,
    out_file: File,
    opts: &WriteOptions,
) -> Result<WriteReport, ArchiveError> {
    let w = ParallelWriter::with_options(out_file, &opts.compression)
        .map_err(|source| ArchiveError::Output { source })?;
    let (mut report, w) = write_tree_inner(src, w, opts)?;
    let (file, stats) = w
        .finish()
        .map_err(|source| ArchiveError::Output { source })?;
    file.sync_all()
        .map_err(|source| ArchiveError::Output { source })?;
    report.compressed = Some(stats);
    Ok(report)
}

fn write_tree_inner<W: Write>(
    src: &Path,
    out: W,
    opts: &WriteOptions,
) -> Result<(WriteReport, W), ArchiveError> {
    let root =
        File::open(src).map_err(|e| ArchiveError::io("open the source directory", src, e))?;
    let st = fstat(root.as_raw_fd())
        .map_err(|e| ArchiveError::io("stat the source directory", src, e.into()))?;
    if kind_of(&st) != Some(EntryKind::Dir) {
        return Err(ArchiveError::io(
            "archive",
            src,
            io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }
    // Small files are read on the scan threads, except when a test hooks the moment of the
    // read on the writer's thread.
    let ahead = ReadAhead::new(opts.parent);
    let use_ahead = opts.before_file_read.is_none();
    let read = |d: &File, n: &CStr, rel: &[u8], st: &FileStat| ahead.read(d, n, rel, st);
    let mut w = Writer::new(src, opts, TarOut::new(out), use_ahead.then_some(&ahead));
    let walk_opts = walk::Options {
        one_file_system: opts.one_file_system,
        ahead: use_ahead.then_some(&read as walk::AheadFn<'_, Ahead>),
        skip_dir: opts.skip_dir.filter(|_| opts.parent.is_some()),
        ..walk::Options::default()
    };
    walk::walk(root, st, &walk_opts, &mut w)?;
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_order_of_a_small_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir(root.join("b")).expect("mkdir");
        std::fs::write(root.join("b/x"), b"hello").expect("write");
        std::fs::write(root.join("a"), b"").expect("write");
        std::fs::write(root.join("b-"), b"1").expect("write");
        std::os::unix::net::UnixListener::bind(root.join("sock")).expect("socket");
        let mut out = Vec::new();
        let report = write_tree(root, &mut out, &WriteOptions::default()).expect("write_tree");
        let mut ar = tar::Archive::new(&out[..]);
        let names: Vec<String> = ar
            .entries()
            .expect("entries")
            .map(|e| String::from_utf8_lossy(&e.expect("entry").path_bytes()).into_owned())
            .collect();
        assert_eq!(names, ["./", "./a", "./b/", "./b/x", "./b-"]);
        assert_eq!(report.sockets_skipped, 1);
        assert_eq!(report.files, 3);
        assert_eq!(report.dirs, 2);
        assert_eq!(report.bytes_in, 6);
        let idx: Vec<&[u8]> = report.index.entries().iter().map(|e| &e.path[..]).collect();
        assert_eq!(idx, [&b""[..], b"a", b"b", b"b/x", b"b-"]);
    }

    #[test]
    fn files_read_ahead_are_stored_as_the_writer_would_store_them() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for d in 0..20 {
            let sub = root.join(format!("d{d}"));
            std::fs::create_dir(&sub).expect("mkdir");
            for f in 0..30 {
                let len = (d * 31 + f * 977) % 70_000; // some above read-ahead's limit
                std::fs::write(sub.join(format!("f{f}")), vec![(d + f) as u8; len]).expect("write");
            }
            std::fs::set_permissions(sub.join("f1"), std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
            std::fs::hard_link(sub.join("f2"), sub.join("link")).expect("link");
        }
        let mut ahead = Vec::new();
        write_tree(root, &mut ahead, &WriteOptions::default()).expect("with read-ahead");
        let mut plain = Vec::new();
        let opts = WriteOptions {
            // A read hook turns read-ahead off: every file is read on the writer's thread.
            before_file_read: Some(Box::new(|_| {})),
            ..Default::default()
        };
        write_tree(root, &mut plain, &opts).expect("without read-ahead");
        assert!(ahead == plain, "the two archives differ");
    }

    #[test]
    fn missing_source_is_an_error_naming_it() {
        let r = write_tree(
            Path::new("/nonexistent/allspark-test"),
            Vec::new(),
            &WriteOptions::default(),
        );
        let msg = r.expect_err("missing source").to_string();
        assert!(msg.contains("/nonexistent/allspark-test"), "{msg}");
    }

    #[test]
    fn output_errors_are_fatal() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::StorageFull, "no space"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("f"), b"x").expect("write");
        let err = write_tree(dir.path(), Full, &WriteOptions::default()).expect_err("full");
        assert!(matches!(err, ArchiveError::Output { .. }), "{err}");
    }
}
