//! The driver's errors: what `docker` prints when a volume call is refused or fails, and the error kind the protocol layer maps to an answer.

use std::io;

use crate::core::store::StoreError;

/// A refused or failed call; the text is what `docker` prints.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("no such volume: {0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Busy(String),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub(crate) fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> DriverError {
    let context = context.into();
    move |source| DriverError::Io { context, source }
}

pub type Result<T> = std::result::Result<T, DriverError>;
