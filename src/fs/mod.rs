//! File-system primitives: durable writes and locks, host paths given in `device=`, tree copies, the one tree walker, hashing as bytes pass.

pub mod beneath;
pub mod copy;
pub mod durable;
pub mod hash;
pub mod hostpath;
pub mod mountinfo;
pub mod walk;
