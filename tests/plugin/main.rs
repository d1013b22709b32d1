//! The plugin process on a real socket: the VolumeDriver protocol and restarts.

#[path = "../support/mod.rs"]
mod support;

mod protocol;
mod restart;
