//! Operator workflows over volumes: migration (to a directory or another pool), workspace cleanup, templates, volume references, disaster recovery, moving a volume through a remote.

pub mod docker_volumes;
pub mod dr;
pub mod migrate;
pub mod offsite;
pub mod snapshot;
pub mod template;
pub mod tier;
pub mod volref;
pub mod workspace;
