//! Prometheus metrics of the agent: text exposition rendered with `prometheus-client`, and a small hyper server answering `GET /metrics`.
//!
//! # Series
//!
//! | name | labels | value |
//! |---|---|---|
//! | `allspark_volume_bytes` | `volume` | space on disk (`du -s -x`), absent if the volume could not be measured |
//! | `allspark_volume_apparent_bytes` | `volume` | sum of file sizes |
//! | `allspark_volume_files` | `volume` | distinct non-directory inodes |
//! | `allspark_volume_capacity_bytes` | `volume` | the `size` option; absent without one |
//! | `allspark_volume_capacity_enforced` | `volume` | 1 when `size` is a btrfs qgroup limit, 0 when only reported against; absent without one |
//! | `allspark_volume_mounted` | `volume` | live mount references |
//! | `allspark_snapshots` | `volume` | complete snapshots |
//! | `allspark_snapshot_bytes` | `volume` | sum of the snapshot files' sizes |
//! | `allspark_last_snapshot_timestamp_seconds` | `volume` | Unix time of the newest snapshot; absent without one |
//! | `allspark_filesystem_used_ratio` | `mount` | `used / (used + available)`, 0..1 (as `df`) |
//! | `allspark_filesystem_size_bytes` | `mount` | filesystem size |
//! | `allspark_filesystem_available_bytes` | `mount` | space available to unprivileged users |
//! | `allspark_usage_measured_timestamp_seconds` | | when the figures above were measured |
//! | `allspark_spool_depth` | | plugin events waiting in `<root>/spool` |
//! | `allspark_plugin_calls_total` | `call`, `outcome` (`ok`/`error`) | plugin calls since the plugin started |
//! | `allspark_plugin_call_seconds_sum` | `call` | total time spent in those calls |
//! | `allspark_plugin_call_seconds_max` | `call` | longest of those calls |
//! | `allspark_last_backup_timestamp_seconds` | `type` | end of the last backup run of that type |
//! | `allspark_last_backup_success` | `type` | 1 if that run succeeded, else 0 |
//! | `allspark_maintenance_runs_total` | `container`, `outcome` (`ok`/`error`) | maintenance commands run by the agent |
//! | `allspark_last_maintenance_timestamp_seconds` | `container` | end of the last maintenance run |
//! | `allspark_last_maintenance_success` | `container` | 1 if it succeeded, else 0 |
//!
//! Volume and filesystem series come from the last [`Report`] handed to
//! [`MetricsState::set_report`] (the agent measures periodically, see
//! [`crate::agent::alerts::measure_and_alert`]); before the first one they are absent.
//! Everything else is read at scrape time from small files: the plugin's
//! `<root>/state/plugin-stats.json` (absent file: no plugin series), the spool
//! directory listing, and `<root>/state/agent/last-backup-<type>.json`
//! (`{"finished_at": RFC 3339, "ok": bool}`, written by the backup code; absent
//! file: no series for that type) and `<root>/state/agent/maintenance.json`
//! ([`crate::agent::maintenance`]). A scrape never walks a volume.
//!
//! The body is the OpenMetrics text that `prometheus-client` writes (which
//! Prometheus also reads as format 0.0.4), served as `text/plain; version=0.0.4`.
//! `GET` (or `HEAD`) `/metrics` answers 200; other methods on `/metrics` 405;
//! every other path 404.

use std::convert::Infallible;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::core::layout::Layout;
use crate::usage::{FilesystemUsage, Report, VolumeUsage};

/// Content type of a scrape answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

type Labels = Vec<(String, String)>;
type GaugeFamily = Family<Labels, Gauge<f64, AtomicU64>>;
type CounterFamily = Family<Labels, Counter<u64>>;

/// What the server reads on each scrape: the root, and the last usage report (swapped in by the agent).
#[derive(Debug)]
pub struct MetricsState {
    layout: Layout,
    report: RwLock<Option<Arc<Report>>>,
}

impl MetricsState {
    pub fn new(layout: Layout) -> Arc<MetricsState> {
        Arc::new(MetricsState {
            layout,
            report: RwLock::new(None),
        })
    }
    /// Replace the usage figures with a full measurement. A volume measured more
    /// recently by [`MetricsState::update_volume`] (created or changed while the walk
    /// ran) keeps its newer figures.
    pub fn set_report(&self, mut report: Report) {
        let mut guard = self.report.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = guard.as_deref() {
            for v in &old.volumes {
                match report.volumes.iter_mut().find(|n| n.name == v.name) {
                    Some(n) if n.measured_at < v.measured_at => *n = v.clone(),
                    Some(_) => {}
                    None if crate::core::names::VolumeName::parse(&v.name)
                        .is_ok_and(|n| self.layout.record(&n).exists()) =>
                    {
                        report.volumes.push(v.clone())
                    }
                    None => {}
                }
            }
            report.volumes.sort_by(|a, b| a.name.cmp(&b.name));
        }
        *guard = Some(Arc::new(report));
    }
    /// Put one volume's fresh figures in place (added if new), or drop a removed volume
    /// (`usage` `None`), without waiting for the next full measurement.
    pub fn update_volume(&self, name: &str, usage: Option<crate::usage::VolumeUsage>) {
        let mut guard = self.report.write().unwrap_or_else(|p| p.into_inner());
        let mut report = match guard.as_deref() {
            Some(r) => r.clone(),
            None if usage.is_none() => return,
            None => Report {
                measured_at: Utc::now(),
                threshold_percent: crate::usage::DEFAULT_THRESHOLD_PERCENT,
                volumes: Vec::new(),
                filesystems: Vec::new(),
                record_errors: Vec::new(),
            },
        };
        report.volumes.retain(|v| v.name != name);
        if let Some(u) = usage {
            report.volumes.push(u);
            report.volumes.sort_by(|a, b| a.name.cmp(&b.name));
        }
        *guard = Some(Arc::new(report));
    }
    /// The figures scrapes currently show.
    pub fn report(&self) -> Option<Arc<Report>> {
        self.report
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    /// The exposition text of a scrape now.
    pub fn render(&self) -> String {
        render(&self.layout, self.report().as_deref())
    }
}

/// The record the backup code writes after each run of a type.
#[derive(Debug, Deserialize)]
pub struct LastBackup {
    pub finished_at: DateTime<Utc>,
    pub ok: bool,
}

/// Where the backup code records the last run of `kind` (daily, weekly, monthly).
pub fn last_backup_path(layout: &Layout, kind: &str) -> PathBuf {
    layout.agent_dir().join(format!("last-backup-{kind}.json"))
}

/// Where the plugin flushes its call counters.
pub fn plugin_stats_path(layout: &Layout) -> PathBuf {
    layout.root.join("state").join("plugin-stats.json")
}

fn gauge(reg: &mut Registry, name: &str, help: &str) -> GaugeFamily {
    let f = GaugeFamily::default();
    reg.register(name, help, f.clone());
    f
}

/// Escape a label value as the text format requires (`\\`, `\"`, `\n`).
/// prometheus-client 0.23 writes label values verbatim; tests/ops/metrics.rs checks the result,
/// so a version that starts escaping by itself would be noticed (double escaping).
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), escape(v)))
        .collect()
}

fn set(f: &GaugeFamily, pairs: &[(&str, &str)], v: f64) {
    f.get_or_create(&labels(pairs)).set(v);
}

/// Number of spooled events (`*.json`, temp files excluded).
pub fn spool_depth(layout: &Layout) -> u64 {
    fs::read_dir(layout.spool_dir())
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    !n.starts_with('.') && n.ends_with(".json")
                })
                .count() as u64
        })
        .unwrap_or(0)
}

/// `(type, record)` of every readable `last-backup-<type>.json`, sorted by type.
pub fn last_backups(layout: &Layout) -> Vec<(String, LastBackup)> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(layout.agent_dir()) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(kind) = name
            .to_str()
            .and_then(|n| n.strip_prefix("last-backup-"))
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        if kind.is_empty()
            || !kind
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            continue;
        }
        match read_json::<LastBackup>(&e.path()) {
            Some(b) => out.push((kind.to_string(), b)),
            None => tracing::debug!(path = %e.path().display(), "unreadable last-backup record"),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn read_json<T: for<'de> Deserialize<'de>>(p: &Path) -> Option<T> {
    serde_json::from_slice(&fs::read(p).ok()?).ok()
}

fn unix_seconds(t: DateTime<Utc>) -> f64 {
    t.timestamp() as f64 + t.timestamp_subsec_nanos() as f64 / 1e9
}

/// The exposition text: usage series from `report` (if any), the rest read from the files under `layout`.
/// The families are registered (and so printed) in a fixed order: volumes, filesystems, the
/// measurement time, the plugin, backups, maintenance.
pub fn render(layout: &Layout, report: Option<&Report>) -> String {
    let mut reg = Registry::default();
    volume_series(&mut reg, report.map_or(&[], |r| r.volumes.as_slice()));
    filesystem_series(&mut reg, report.map_or(&[], |r| r.filesystems.as_slice()));
    let measured = gauge(
        &mut reg,
        "allspark_usage_measured_timestamp_seconds",
        "Unix time of the usage measurement the volume and filesystem series come from.",
    );
    if let Some(r) = report {
        set(&measured, &[], unix_seconds(r.measured_at));
    }
    plugin_series(&mut reg, layout);
    backup_series(&mut reg, layout);
    maintenance_series(&mut reg, layout);
    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}

/// Per volume: size, files, capacity, mounts and snapshots.
fn volume_series(reg: &mut Registry, volumes: &[VolumeUsage]) {
    let vol_bytes = gauge(
        reg,
        "allspark_volume_bytes",
        "Space the volume's data occupies on disk, in bytes (du -s -x).",
    );
    let vol_apparent = gauge(
        reg,
        "allspark_volume_apparent_bytes",
        "Sum of the sizes of the volume's files, in bytes.",
    );
    let vol_cap = gauge(
        reg,
        "allspark_volume_capacity_bytes",
        "The volume's size option, in bytes.",
    );
    let vol_cap_enforced = gauge(
        reg,
        "allspark_volume_capacity_enforced",
        "1 if the size option is a limit writes cannot pass (btrfs qgroup), 0 if it is only reported against.",
    );
    let vol_files = gauge(
        reg,
        "allspark_volume_files",
        "Files (distinct non-directory inodes) in the volume.",
    );
    let vol_mounted = gauge(
        reg,
        "allspark_volume_mounted",
        "Live mount references of the volume.",
    );
    let snaps = gauge(
        reg,
        "allspark_snapshots",
        "Complete snapshots of the volume.",
    );
    let snap_bytes = gauge(
        reg,
        "allspark_snapshot_bytes",
        "Bytes stored in the volume's snapshots.",
    );
    let last_snap = gauge(
        reg,
        "allspark_last_snapshot_timestamp_seconds",
        "Unix time of the volume's newest snapshot.",
    );
    for v in volumes {
        let l = [("volume", v.name.as_str())];
        if v.error.is_none() {
            set(&vol_bytes, &l, v.bytes as f64);
            set(&vol_apparent, &l, v.apparent_bytes as f64);
            set(&vol_files, &l, v.files as f64);
        }
        if let Some(c) = v.capacity {
            set(&vol_cap, &l, c as f64);
            set(
                &vol_cap_enforced,
                &l,
                f64::from(u8::from(v.capacity_enforced)),
            );
        }
        set(&vol_mounted, &l, v.mounted as f64);
        set(&snaps, &l, v.snapshots as f64);
        set(&snap_bytes, &l, v.snapshot_bytes as f64);
        if let Some(t) = v.last_snapshot_at {
            set(&last_snap, &l, unix_seconds(t));
        }
    }
}

/// Per filesystem holding volumes: used ratio, size, available bytes.
fn filesystem_series(reg: &mut Registry, filesystems: &[FilesystemUsage]) {
    let fs_ratio = gauge(
        reg,
        "allspark_filesystem_used_ratio",
        "Used fraction of a filesystem holding volumes: used / (used + available), as df.",
    );
    let fs_size = gauge(
        reg,
        "allspark_filesystem_size_bytes",
        "Size of a filesystem holding volumes, in bytes.",
    );
    let fs_avail = gauge(
        reg,
        "allspark_filesystem_available_bytes",
        "Bytes available to unprivileged users on a filesystem holding volumes.",
    );
    for f in filesystems {
        let m = f.mount.to_string_lossy();
        let l = [("mount", m.as_ref())];
        set(&fs_ratio, &l, f.used_ratio());
        set(&fs_size, &l, f.total_bytes as f64);
        set(&fs_avail, &l, f.available_bytes as f64);
    }
}

/// The plugin: its spool depth and its call counts and times (from its stats file).
fn plugin_series(reg: &mut Registry, layout: &Layout) {
    let spool = gauge(
        reg,
        "allspark_spool_depth",
        "Plugin events waiting in the spool for the agent.",
    );
    let calls = CounterFamily::default();
    reg.register(
        "allspark_plugin_calls",
        "VolumeDriver calls answered by the plugin since it started.",
        calls.clone(),
    );
    let call_sum = gauge(
        reg,
        "allspark_plugin_call_seconds_sum",
        "Total time the plugin spent answering calls since it started, in seconds.",
    );
    let call_max = gauge(
        reg,
        "allspark_plugin_call_seconds_max",
        "Longest call the plugin answered since it started, in seconds.",
    );
    set(&spool, &[], spool_depth(layout) as f64);
    if let Some(stats) = crate::core::callstats::load(&plugin_stats_path(layout)) {
        for (call, t) in &stats {
            for (outcome, n) in [("ok", t.ok), ("error", t.errors)] {
                calls
                    .get_or_create(&labels(&[("call", call), ("outcome", outcome)]))
                    .inc_by(n);
            }
            let l = [("call", call.as_str())];
            set(&call_sum, &l, t.micros_total as f64 / 1e6);
            set(&call_max, &l, t.micros_max as f64 / 1e6);
        }
    }
}

/// Per backup type: when its last run finished and whether it succeeded.
fn backup_series(reg: &mut Registry, layout: &Layout) {
    let backup_ts = gauge(
        reg,
        "allspark_last_backup_timestamp_seconds",
        "Unix time the last backup run of a type finished.",
    );
    let backup_ok = gauge(
        reg,
        "allspark_last_backup_success",
        "1 if the last backup run of a type succeeded, 0 if it failed.",
    );
    for (kind, b) in last_backups(layout) {
        let l = [("type", kind.as_str())];
        set(&backup_ts, &l, unix_seconds(b.finished_at));
        set(&backup_ok, &l, if b.ok { 1.0 } else { 0.0 });
    }
}

/// Per container with a maintenance command: runs by outcome, and the last one.
fn maintenance_series(reg: &mut Registry, layout: &Layout) {
    let maint_runs = CounterFamily::default();
    reg.register(
        "allspark_maintenance_runs",
        "Maintenance commands (allspark.maintenance.exec) the agent ran, by container and outcome.",
        maint_runs.clone(),
    );
    let maint_ts = gauge(
        reg,
        "allspark_last_maintenance_timestamp_seconds",
        "Unix time the last maintenance command of a container finished.",
    );
    let maint_ok = gauge(
        reg,
        "allspark_last_maintenance_success",
        "1 if the last maintenance command of a container succeeded, 0 if it failed.",
    );
    for (container, m) in crate::agent::maintenance::load_stats(layout) {
        for (outcome, n) in [("ok", m.ok), ("error", m.failed)] {
            maint_runs
                .get_or_create(&labels(&[("container", &container), ("outcome", outcome)]))
                .inc_by(n);
        }
        if let Some(t) = m.last_finished_at {
            let l = [("container", container.as_str())];
            set(&maint_ts, &l, unix_seconds(t));
            set(&maint_ok, &l, if m.last_ok { 1.0 } else { 0.0 });
        }
    }
}

/// A running metrics server.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
    /// Stop accepting connections.
    pub fn abort(&self) {
        self.task.abort();
    }
    /// Wait for the accept loop (it only ends when aborted).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Bind `addr` (port 0: the OS picks) and serve scrapes on the current tokio runtime.
/// Returns once bound; the server runs in a spawned task.
pub async fn serve(addr: SocketAddr, state: Arc<MetricsState>) -> io::Result<MetricsServer> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving metrics on http://{addr}/metrics");
    let task = tokio::spawn(accept_loop(listener, state));
    Ok(MetricsServer { addr, task })
}

/// Serve scrapes on an already bound listener, forever.
pub async fn accept_loop(listener: TcpListener, state: Arc<MetricsState>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!("metrics accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(state.clone(), req));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "metrics connection: {e}");
            }
        });
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn handle(
    state: Arc<MetricsState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/metrics" {
        return Ok(plain(StatusCode::NOT_FOUND, "not found; try /metrics\n"));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET /metrics\n");
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return Ok(r);
    }
    // The scrape reads a few small files: keep it off the async workers.
    let body = match tokio::task::spawn_blocking(move || state.render()).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!("rendering metrics failed: {e}");
            return Ok(plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "rendering metrics failed\n",
            ));
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
    );
    Ok(r)
}
