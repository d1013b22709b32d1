//! The context commands and the agent share (state root, host view, Docker endpoint), and the one place a `Driver` is built on the real system calls.

use std::sync::Arc;

use crate::core::layout::{HostView, Layout};
use crate::core::options::Compression;
use crate::plugin::driver::{Driver, DriverSettings};
use crate::plugin::mounts::LinuxSys;

/// Where to find things (the root, the host view and Docker) and how to write archives.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub layout: Layout,
    pub view: HostView,
    pub docker_url: String,
    /// Codec of new snapshot chains and backups of volumes without a `compression=` option.
    pub compression: Compression,
}

impl Ctx {
    /// A driver over this context's records, on the real system calls.
    pub fn driver(&self, settings: DriverSettings) -> std::io::Result<Driver> {
        driver(self.layout.clone(), settings)
    }
}

/// A driver over `layout`'s records, on the real system calls (the plugin process, and
/// commands that create, remove or move volumes).
pub fn driver(layout: Layout, settings: DriverSettings) -> std::io::Result<Driver> {
    Driver::new(layout, Arc::new(LinuxSys::new()), settings)
}
