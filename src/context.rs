//! The context commands and the agent share: state root, host view, Docker endpoint and the codec of new archives.

use crate::core::layout::{HostView, Layout};
use crate::core::options::Compression;

/// Where to find things (the root, the host view and Docker) and how to write archives.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub layout: Layout,
    pub view: HostView,
    pub docker_url: String,
    /// Codec of new snapshot chains and backups of volumes without a `compression=` option.
    pub compression: Compression,
}
