//! Archive engine: round trips, incremental chains, live trees, malicious archives.

#[path = "../support/mod.rs"]
mod support;

mod incremental;
mod live;
mod malicious;
mod roundtrip;
mod util;
