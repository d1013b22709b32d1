//! The metrics server over real TCP: scrape `/metrics`, parse every sample line, check series and values; 404 elsewhere.

use allspark::core::names::VolumeName;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::net::SocketAddr;
use std::path::Path;

use allspark::agent::metrics::{self, MetricsState};
use allspark::core::callstats::CallTotals;
use allspark::core::layout::{HostView, Layout};
use allspark::core::store::{Store, VolumeRecord};
use allspark::usage::{self, ReportOptions};
use chrono::Utc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// (metric name, sorted labels) -> value.
type Samples = HashMap<(String, BTreeMap<String, String>), f64>;

/// Parse the text exposition strictly: every line is a comment or `name{labels} value`.
fn parse(text: &str) -> Samples {
    let mut out = Samples::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value is not a float in {line:?}"));
        let (name, labels) = match series.find('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some(i) => {
                assert!(series.ends_with('}'), "unterminated labels in {line:?}");
                (
                    series[..i].to_string(),
                    parse_labels(&series[i + 1..series.len() - 1], line),
                )
            }
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        assert!(
            out.insert((name, labels), value).is_none(),
            "duplicate series {line:?}"
        );
    }
    out
}

fn parse_labels(mut s: &str, line: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    while !s.is_empty() {
        let eq = s
            .find("=\"")
            .unwrap_or_else(|| panic!("bad labels in {line:?}"));
        let key = s[..eq].to_string();
        let mut val = String::new();
        let mut chars = s[eq + 2..].char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break eq + 2 + i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => val.push('\n'),
                    Some((_, c)) => val.push(c),
                    None => panic!("bad escape in {line:?}"),
                },
                Some((_, c)) => val.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        m.insert(key, val);
        s = &s[end + 1..];
        s = s.strip_prefix(',').unwrap_or(s);
    }
    m
}

fn get(s: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let l = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    s.get(&(name.to_string(), l)).copied()
}

fn has_name(s: &Samples, name: &str) -> bool {
    s.keys().any(|(n, _)| n == name)
}

/// A raw HTTP/1.1 request over TCP; returns (status, content-type, body).
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("content-type:")
                .then(|| l[13..].trim().to_string())
        })
        .unwrap_or_default();
    let len: Option<usize> = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().parse().unwrap())
    });
    if let Some(len) = len {
        assert_eq!(body.len(), len, "body length");
    }
    (status, ctype, body.to_string())
}

fn write(p: &Path, bytes: &[u8]) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, bytes).unwrap();
}

fn save(layout: &Layout, name: &str, opts: &[(&str, &str)], mounts: u32) {
    let mut rec = VolumeRecord::managed(&VolumeName::fixed(name), opts).unwrap();
    rec.mounts = (0..mounts).map(|i| (format!("m{i}"), 1)).collect();
    Store::new(layout.clone()).save(&rec).unwrap();
    fs::create_dir_all(layout.managed_data(&VolumeName::fixed(name))).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_over_tcp_and_parse() {
    let t = tempfile::tempdir().unwrap();
    let layout = Layout::new(t.path().join("root"));
    layout.ensure().unwrap();
    save(&layout, "pg", &[("size", "1M")], 3);
    save(&layout, "cache", &[("class", "temporary")], 0);
    write(
        &layout.managed_data(&VolumeName::fixed("pg")).join("base/1"),
        &vec![1u8; 200_000],
    );
    write(
        &layout.managed_data(&VolumeName::fixed("cache")).join("x"),
        b"hello",
    );
    let snap_id = "20261125T200000.000000Z";
    write(
        &layout
            .volume_snapshots(&VolumeName::fixed("pg"))
            .join(snap_id)
            .join("data.tar.gz"),
        &[0u8; 777],
    );
    // Plugin call totals as the plugin flushes them.
    let mut stats = BTreeMap::new();
    stats.insert(
        "Mount".to_string(),
        CallTotals {
            ok: 3,
            errors: 1,
            micros_total: 1_500_000,
            micros_max: 1_000_000,
        },
    );
    stats.insert(
        "Get".to_string(),
        CallTotals {
            ok: 10,
            errors: 0,
            micros_total: 2_500,
            micros_max: 900,
        },
    );
    write(
        &metrics::plugin_stats_path(&layout),
        &serde_json::to_vec(&stats).unwrap(),
    );
    // Two spooled events and a temp file that is not one.
    write(&layout.spool_dir().join("0001-a.json"), b"{}");
    write(&layout.spool_dir().join("0002-b.json"), b"{}");
    write(&layout.spool_dir().join(".0003-c.json.tmp.1.0"), b"{");
    // Backup records: daily ok, weekly failed, monthly absent.
    write(
        &metrics::last_backup_path(&layout, "daily"),
        br#"{"finished_at":"2026-11-25T02:00:05Z","ok":true}"#,
    );
    write(
        &metrics::last_backup_path(&layout, "weekly"),
        br#"{"finished_at":"2026-11-22T03:10:00.5Z","ok":false}"#,
    );

    let state = MetricsState::new(layout.clone());
    let server = metrics::serve("127.0.0.1:0".parse().unwrap(), state.clone())
        .await
        .unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);

    // Before the first measurement: no volume series, the rest is there.
    let (status, ctype, body) = http(addr, "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(ctype, "text/plain; version=0.0.4");
    let s = parse(&body);
    assert!(!has_name(&s, "allspark_volume_bytes"), "{body}");
    assert_eq!(get(&s, "allspark_spool_depth", &[]), Some(2.0));

    let report = tokio::task::spawn_blocking({
        let layout = layout.clone();
        move || usage::measure_report(&layout, &HostView::default(), &ReportOptions::default())
    })
    .await
    .unwrap();
    let pg = report
        .volumes
        .iter()
        .find(|v| v.name == "pg")
        .unwrap()
        .clone();
    let fs0 = report.filesystems[0].clone();
    state.set_report(report);

    let (status, _, body) = http(addr, "GET", "/metrics").await;
    assert_eq!(status, 200);
    let s = parse(&body);
    let v = |name: &str, vol: &str| get(&s, name, &[("volume", vol)]);
    assert_eq!(v("allspark_volume_bytes", "pg"), Some(pg.bytes as f64));
    assert!(pg.bytes >= 200_000);
    assert_eq!(v("allspark_volume_capacity_bytes", "pg"), Some(1048576.0));
    assert_eq!(v("allspark_volume_capacity_bytes", "cache"), None);
    assert_eq!(v("allspark_volume_files", "pg"), Some(1.0));
    assert_eq!(v("allspark_volume_files", "cache"), Some(1.0));
    assert_eq!(v("allspark_volume_mounted", "pg"), Some(3.0));
    assert_eq!(v("allspark_volume_mounted", "cache"), Some(0.0));
    assert_eq!(v("allspark_snapshots", "pg"), Some(1.0));
    assert_eq!(v("allspark_snapshots", "cache"), Some(0.0));
    assert_eq!(v("allspark_snapshot_bytes", "pg"), Some(777.0));
    assert_eq!(
        v("allspark_last_snapshot_timestamp_seconds", "pg"),
        Some(
            allspark::core::snapshot_id::parse(snap_id)
                .unwrap()
                .timestamp() as f64
        )
    );
    assert_eq!(v("allspark_last_snapshot_timestamp_seconds", "cache"), None);
    let mount = fs0.mount.to_string_lossy().to_string();
    let ratio = get(&s, "allspark_filesystem_used_ratio", &[("mount", &mount)]).unwrap();
    assert!(ratio > 0.0 && ratio < 1.0, "{ratio}");
    assert!(
        (ratio * 100.0 - fs0.percent).abs() < 0.06,
        "{ratio} vs {}",
        fs0.percent
    );
    assert_eq!(get(&s, "allspark_spool_depth", &[]), Some(2.0));
    let call = |c: &str, o: &str| {
        get(
            &s,
            "allspark_plugin_calls_total",
            &[("call", c), ("outcome", o)],
        )
    };
    assert_eq!(call("Mount", "ok"), Some(3.0));
    assert_eq!(call("Mount", "error"), Some(1.0));
    assert_eq!(call("Get", "ok"), Some(10.0));
    assert_eq!(
        get(&s, "allspark_plugin_call_seconds_sum", &[("call", "Mount")]),
        Some(1.5)
    );
    assert_eq!(
        get(&s, "allspark_plugin_call_seconds_max", &[("call", "Mount")]),
        Some(1.0)
    );
    assert_eq!(
        get(&s, "allspark_plugin_call_seconds_max", &[("call", "Get")]),
        Some(0.0009)
    );
    let backup = |name: &str, ty: &str| get(&s, name, &[("type", ty)]);
    assert_eq!(
        backup("allspark_last_backup_timestamp_seconds", "daily"),
        Some(1795572005.0)
    );
    assert_eq!(backup("allspark_last_backup_success", "daily"), Some(1.0));
    assert_eq!(
        backup("allspark_last_backup_timestamp_seconds", "weekly"),
        Some(1795317000.5)
    );
    assert_eq!(backup("allspark_last_backup_success", "weekly"), Some(0.0));
    assert_eq!(backup("allspark_last_backup_success", "monthly"), None);
    assert!(
        body.contains("# TYPE allspark_volume_bytes gauge"),
        "{body}"
    );

    // The agent refreshes the figures: the next scrape shows them.
    write(
        &layout.managed_data(&VolumeName::fixed("cache")).join("y"),
        &vec![2u8; 50_000],
    );
    fs::remove_file(layout.spool_dir().join("0001-a.json")).unwrap();
    let report = tokio::task::spawn_blocking({
        let layout = layout.clone();
        move || usage::measure_report(&layout, &HostView::default(), &ReportOptions::default())
    })
    .await
    .unwrap();
    let cache_bytes = report
        .volumes
        .iter()
        .find(|v| v.name == "cache")
        .unwrap()
        .bytes;
    state.set_report(report);
    let (_, _, body) = http(addr, "GET", "/metrics").await;
    let s = parse(&body);
    assert_eq!(
        get(&s, "allspark_volume_files", &[("volume", "cache")]),
        Some(2.0)
    );
    assert_eq!(
        get(&s, "allspark_volume_bytes", &[("volume", "cache")]),
        Some(cache_bytes as f64)
    );
    assert_eq!(get(&s, "allspark_spool_depth", &[]), Some(1.0));

    // Anything else.
    for path in ["/", "/metrics/x", "/favicon.ico", "/metricsx"] {
        assert_eq!(http(addr, "GET", path).await.0, 404, "{path}");
    }
    assert_eq!(http(addr, "POST", "/metrics").await.0, 405);
    server.abort();
}

#[test]
fn render_without_any_state_is_valid_and_minimal() {
    let t = tempfile::tempdir().unwrap();
    let layout = Layout::new(t.path());
    let text = metrics::render(&layout, None);
    let s = parse(&text);
    assert_eq!(get(&s, "allspark_spool_depth", &[]), Some(0.0));
    assert!(!has_name(&s, "allspark_plugin_calls_total"));
    assert!(!has_name(&s, "allspark_last_backup_success"));
    // A corrupt backup record is skipped, not fatal.
    write(&metrics::last_backup_path(&layout, "daily"), b"{oops");
    let s = parse(&metrics::render(&layout, None));
    assert!(!has_name(&s, "allspark_last_backup_success"));
}

#[test]
fn label_values_are_escaped() {
    let t = tempfile::tempdir().unwrap();
    let layout = Layout::new(t.path());
    let report = usage::Report {
        measured_at: Utc::now(),
        threshold_percent: 80.0,
        volumes: vec![],
        filesystems: vec![usage::FilesystemUsage {
            mount: "/mnt/we\"ird\\pa\nth".into(),
            total_bytes: 100,
            used_bytes: 25,
            available_bytes: 75,
            percent: 25.0,
            volumes: vec![],
            alert: false,
        }],
        record_errors: vec![],
    };
    let s = parse(&metrics::render(&layout, Some(&report)));
    assert_eq!(
        get(
            &s,
            "allspark_filesystem_used_ratio",
            &[("mount", "/mnt/we\"ird\\pa\nth")]
        ),
        Some(0.25)
    );
}
