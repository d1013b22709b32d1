//! Helpers shared by every test binary: Docker and process helpers (`common`), the socket-level plugin and agent (`harness`), scripts/install.sh on this machine (`install`), the legacy driver on dockerd (`legacy`), backups against dockerd (`backups`), the target of escape attacks (`outside`), an S3 endpoint on 127.0.0.1 (`s3`).
#![allow(dead_code, unused_imports)]

pub mod backups;
pub mod common;
pub mod harness;
pub mod install;
pub mod legacy;
pub mod outside;
pub mod s3;
