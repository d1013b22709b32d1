//! Operator workflows over volumes: migration (to a directory or another pool), workspace cleanup, templates, volume references, disaster recovery.

pub mod dr;
pub mod migrate;
pub mod template;
pub mod tier;
pub mod volref;
pub mod workspace;
