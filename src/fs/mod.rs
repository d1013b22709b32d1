//! File-system primitives: durable writes and locks, host paths given in `device=`, tree copies, the one tree walker.

pub mod beneath;
pub mod copy;
pub mod durable;
pub mod hostpath;
pub mod mountinfo;
pub mod walk;
