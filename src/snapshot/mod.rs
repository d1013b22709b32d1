//! Snapshots of volumes: create (incremental), list, verify, restore through staging, retention.
//!
//! A snapshot is `<root>/snapshots/<volume>/<id>/` holding `manifest.json`, the archive
//! `snapshot.tar.zst` or `snapshot.tar.gz` (a standard archive, see `crate::archive`; the
//! manifest records its codec) and `index` (the file list the next incremental compares
//! against). It appears under its id only when complete.
//!
//! The codec of a chain is chosen when its full snapshot is taken (the volume's
//! `compression=` option, else the agent's setting) and kept by its incrementals, so a
//! chain switches codec at its next full snapshot; a restore reads each archive with its
//! own codec, whatever the mix.

pub mod catalog;
pub mod create;
pub mod manifest;
pub mod restore;
pub(crate) mod retention;
pub(crate) mod verify;

pub use create::{create, CreateOutcome, CreateRequest};
pub use manifest::{Manifest, Trigger};
pub use restore::{restore_chain_into, RestoreReport};

/// A snapshot operation that failed; the text says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Corrupt(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    #[error(transparent)]
    Store(#[from] crate::core::store::StoreError),
}

impl SnapshotError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> SnapshotError {
        SnapshotError::Io {
            context: context.into(),
            source,
        }
    }
}

/// A reader that reports how many bytes went through it (for progress bars).
pub struct Counting<'a, R> {
    inner: R,
    seen: u64,
    progress: Option<&'a (dyn Fn(u64) + Send + Sync)>,
}

impl<'a, R> Counting<'a, R> {
    pub fn new(inner: R, progress: Option<&'a (dyn Fn(u64) + Send + Sync)>) -> Self {
        Counting {
            inner,
            seen: 0,
            progress,
        }
    }
}

impl<R: std::io::Read> std::io::Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen += n as u64;
        if let Some(p) = self.progress {
            p(self.seen);
        }
        Ok(n)
    }
}
