//! allspark library: every piece the `allspark` binary dispatches to.

pub mod archive;
