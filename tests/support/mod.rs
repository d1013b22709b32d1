//! Helpers shared by every test binary: Docker and process helpers (`common`), the socket-level plugin and agent (`harness`), the legacy driver on dockerd (`legacy`).
#![allow(dead_code, unused_imports)]

pub mod common;
pub mod harness;
pub mod legacy;
