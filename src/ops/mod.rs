//! Operator workflows over volumes: migration, workspace cleanup, templates, volume references, disaster recovery.

pub mod dr;
pub mod migrate;
pub mod snapshot;
pub mod template;
pub mod volref;
pub mod workspace;
