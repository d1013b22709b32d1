//! Maps VolumeDriver calls onto the `Driver`: decode the wire types, call, log one line, encode.

use std::sync::Arc;
use std::time::Instant;

use hyper::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::core::names::VolumeName;
use crate::plugin::driver::{Driver, DriverError};
use crate::plugin::protocol::*;
use crate::plugin::server::{Handler, Reply};

/// The driver behind the socket.
pub struct DriverApi {
    pub driver: Arc<Driver>,
}

fn decode<T: DeserializeOwned>(call: &str, body: &[u8]) -> Result<T, Reply> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        Reply::err(
            StatusCode::BAD_REQUEST,
            format!("malformed JSON for /{call}: {e}"),
        )
    })
}

fn encode<T: Serialize>(value: &T) -> Reply {
    match serde_json::to_vec(value) {
        Ok(b) => Reply::ok(b),
        Err(e) => Reply::err(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the reply: {e}"),
        ),
    }
}

fn failure(e: &DriverError) -> Reply {
    let status = match e {
        DriverError::NotFound(_) => StatusCode::NOT_FOUND,
        DriverError::Invalid(_) => StatusCode::BAD_REQUEST,
        DriverError::Conflict(_) | DriverError::Busy(_) => StatusCode::CONFLICT,
        DriverError::Io { .. } | DriverError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Reply::err(status, e.to_string())
}

impl DriverApi {
    fn dispatch(&self, call: &str, body: &[u8]) -> (Reply, Option<String>) {
        let d = &self.driver;
        macro_rules! run {
            // The name is checked once here; the driver takes it typed.
            ($req:ty, |$r:ident, $n:ident| $work:expr) => {{
                let $r: $req = match decode(call, body) {
                    Ok(r) => r,
                    Err(reply) => return (reply, None),
                };
                let volume = Some($r.name.clone());
                let reply = match VolumeName::parse(&$r.name)
                    .map_err(DriverError::Invalid)
                    .and_then(|$n| $work)
                {
                    Ok(v) => encode(&v),
                    Err(e) => failure(&e),
                };
                (reply, volume)
            }};
        }
        let empty = || ErrResponse { err: String::new() };
        match call {
            "Plugin.Activate" => (encode(&ActivateResponse { implements: vec!["VolumeDriver"] }), None),
            "VolumeDriver.Capabilities" => {
                (encode(&CapabilitiesResponse { capabilities: Capability { scope: "local" } }), None)
            }
            "VolumeDriver.Create" => run!(CreateRequest, |r, n| d.create(&n, r.opts.as_ref()).map(|_| empty())),
            "VolumeDriver.Remove" => run!(NameRequest, |r, n| d.remove(&n).map(|_| empty())),
            "VolumeDriver.Mount" => run!(MountRequest, |r, n| d.mount(&n, &r.id).map(|p| MountpointResponse {
                mountpoint: p.to_string_lossy().into_owned(),
                err: String::new()
            })),
            "VolumeDriver.Unmount" => run!(MountRequest, |r, n| d.unmount(&n, &r.id).map(|_| empty())),
            "VolumeDriver.Path" => run!(NameRequest, |r, n| d.path(&n).map(|p| MountpointResponse {
                mountpoint: p.to_string_lossy().into_owned(),
                err: String::new()
            })),
            "VolumeDriver.Get" => run!(NameRequest, |r, n| d.get(&n).map(|v| GetResponse { volume: v, err: String::new() })),
            "VolumeDriver.List" => {
                let reply = match d.list() {
                    Ok(volumes) => encode(&ListResponse { volumes, err: String::new() }),
                    Err(e) => failure(&e),
                };
                (reply, None)
            }
            _ => (
                Reply::err(
                    StatusCode::NOT_FOUND,
                    format!("unknown call /{}; this plugin implements Plugin.Activate and VolumeDriver.*", shown_call(call)),
                ),
                None,
            ),
        }
    }
}

/// The calls this plugin answers: statistics are kept per known call, and every other path
/// counts under [`UNKNOWN_CALL`], so junk requests cannot grow them.
pub const KNOWN_CALLS: &[&str] = &[
    "Plugin.Activate",
    "VolumeDriver.Capabilities",
    "VolumeDriver.Create",
    "VolumeDriver.Remove",
    "VolumeDriver.Mount",
    "VolumeDriver.Unmount",
    "VolumeDriver.Path",
    "VolumeDriver.Get",
    "VolumeDriver.List",
];

/// The statistics key of every call not in [`KNOWN_CALLS`].
pub const UNKNOWN_CALL: &str = "unknown";

/// Longest part of a request path that goes into a log line or an error.
const MAX_SHOWN_CALL: usize = 64;

/// The statistics key of a call.
pub fn call_key(call: &str) -> &'static str {
    KNOWN_CALLS
        .iter()
        .find(|k| **k == call)
        .copied()
        .unwrap_or(UNKNOWN_CALL)
}

/// A request path as logs and errors show it: escaped and cut short.
fn shown_call(call: &str) -> String {
    let cut: String = call.chars().take(MAX_SHOWN_CALL).collect();
    let more = if cut.len() < call.len() { "…" } else { "" };
    format!("{}{more}", cut.escape_debug())
}

impl Handler for DriverApi {
    fn handle(&self, raw_call: &str, body: &[u8]) -> Reply {
        let started = Instant::now();
        let (reply, volume) = self.dispatch(raw_call, body);
        let key = call_key(raw_call);
        let shown = shown_call(raw_call);
        let call = if key == UNKNOWN_CALL {
            shown.as_str()
        } else {
            key
        };
        let micros = started.elapsed().as_micros() as u64;
        let volume = volume.unwrap_or_default();
        if reply.status.is_success() {
            tracing::info!(call, volume, micros, outcome = "ok");
        } else {
            let err = String::from_utf8_lossy(&reply.body).into_owned();
            tracing::warn!(
                call,
                volume,
                micros,
                outcome = "error",
                status = reply.status.as_u16(),
                err
            );
        }
        crate::core::callstats::record(key, reply.status.is_success(), micros);
        reply
    }
}
