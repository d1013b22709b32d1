//! Regression tests of the bugs the hardening work found (fuzzing, crash injection, hostile
//! input), each reduced to a deterministic case. docs/hardening.md lists them.

mod harness;

use std::fs;

use harness::{err_of, Plugin};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_allspark");

/// Found by tests/hardening_input.rs: Path did not check the name, so `../decoy` read
/// `state/decoy.json` and answered that a "volume record" there was corrupt, telling the
/// operator to move it aside.
#[test]
fn path_refuses_a_name_that_is_not_a_volume_name() {
    let p = Plugin::start(BIN);
    fs::write(p.root().join("state/decoy.json"), b"{}").unwrap();
    for name in ["../decoy", "../../../../etc/passwd", "a\0b", ""] {
        let (status, v) = p.call("VolumeDriver.Path", json!({"Name": name}));
        let err = err_of(&v);
        assert_eq!(status, 400, "{name:?}: {err}");
        assert!(
            err.contains("names must match") && !err.contains("corrupt"),
            "{name:?}: {err}"
        );
    }
    assert!(p.root().join("state/decoy.json").exists());
}
