//! Archive engine: round trips of both codecs, incremental chains, codec switches and damage in restores, live trees, malicious archives.

#[path = "../support/mod.rs"]
mod support;

mod codecs;
mod incremental;
mod incremental_send;
mod live;
mod malicious;
mod roundtrip;
mod util;
