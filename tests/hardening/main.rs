//! Attacks, faults, crashes, privileges and fuzz-corpus replays.

#[path = "../support/mod.rs"]
mod support;

mod crash;
mod escapes;
mod faults;
mod fuzz;
mod input;
mod limits;
mod privileges;
mod regressions;
mod shared_crash;
