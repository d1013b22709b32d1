//! File-system primitives: durable writes and locks, host paths given in `device=`, tree copies, the one tree walker, hashing as bytes pass.

pub(crate) mod beneath;
pub(crate) mod copy;
pub mod durable;
pub(crate) mod hash;
pub(crate) mod hostpath;
pub(crate) mod mountinfo;
pub(crate) mod walk;
