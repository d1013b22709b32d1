//! Operator workflows over volumes: migration (to a directory or another pool), workspace cleanup, templates, volume references, disaster recovery, moving a volume through a remote.

pub(crate) mod docker_volumes;
pub(crate) mod dr;
pub(crate) mod migrate;
pub(crate) mod offsite;
pub mod snapshot;
pub(crate) mod template;
pub(crate) mod tier;
pub(crate) mod volref;
pub(crate) mod workspace;
