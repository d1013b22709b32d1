//! Helpers shared by every test binary: Docker and process helpers (`common`, which re-exports those of `images`, `test_plugin` and `dockerd` too), the test images and the shipped compose file (`images`), the managed test plugin (`test_plugin`), restarting dockerd (`dockerd`), the socket-level plugin and agent (`harness`), scripts/install.sh on this machine (`install`), the legacy driver on dockerd (`legacy`), backups against dockerd (`backups`), the target of escape attacks (`outside`), an S3 endpoint on 127.0.0.1 (`s3`).
#![allow(dead_code, unused_imports)]

pub mod backups;
pub mod common;
pub mod dockerd;
pub mod harness;
pub mod images;
pub mod install;
pub mod legacy;
pub mod outside;
pub mod s3;
pub mod test_plugin;
