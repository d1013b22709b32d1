//! The agent's periodic work: usage in `Get` Status, a capacity alert logged once per crossing, `/metrics` scraped over TCP.

use crate::support::harness;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{err_of, Plugin};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_allspark");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scrape(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// `name{labels} value` lines as (series, value).
fn parse(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad exposition line {l:?}"));
            (
                series.to_string(),
                value
                    .parse::<f64>()
                    .unwrap_or_else(|_| panic!("bad value in {l:?}")),
            )
        })
        .collect()
}

#[test]
fn agent_reports_usage_in_status_and_metrics_and_alerts_once_per_crossing() {
    let p = Plugin::start(BIN);
    let (_, v) = p.call(
        "VolumeDriver.Create",
        json!({"Name": "cap", "Opts": {"size": "1M", "class": "critical"}}),
    );
    assert_eq!(err_of(&v), "");
    let data = p.root().join("volumes/cap/data");
    std::fs::write(data.join("big"), vec![7u8; 900 * 1024]).unwrap();
    let port = free_port();
    let log_path = p.dir.path().join("agent.log");
    let mut agent = Command::new(BIN)
        .arg("--root")
        .arg(p.root())
        .args([
            "agent",
            "--no-docker-events",
            "--no-schedule",
            "--usage-interval",
            "1",
            "--metrics",
            &format!("127.0.0.1:{port}"),
        ])
        .env("ALLSPARK_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap()))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "cap"}));
        if v["Volume"]["Status"].get("used_bytes").is_some() {
            break v["Volume"]["Status"].clone();
        }
        assert!(Instant::now() < deadline, "no usage figures in Status");
        std::thread::sleep(Duration::from_millis(100));
    };
    let used = status["used_bytes"].as_u64().unwrap();
    assert!((900 * 1024..=1024 * 1024).contains(&used), "{status}");
    assert!(status["used_percent"].as_f64().unwrap() >= 85.0, "{status}");

    let text = scrape(port).expect("metrics answer");
    let series = parse(&text);
    let bytes = series
        .iter()
        .find(|(s, _)| s.starts_with("allspark_volume_bytes{") && s.contains("volume=\"cap\""))
        .expect(&text);
    assert_eq!(bytes.1 as u64, used);
    let cap = series
        .iter()
        .find(|(s, _)| s.starts_with("allspark_volume_capacity_bytes{") && s.contains("\"cap\""))
        .expect(&text);
    assert_eq!(cap.1 as u64, 1 << 20);

    // Several more measurements at the same level: still one warning.
    std::thread::sleep(Duration::from_secs(3));
    // Drop below, then cross again: a second warning.
    std::fs::remove_file(data.join("big")).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    std::fs::write(data.join("big"), vec![7u8; 950 * 1024]).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let _ = agent.kill();
    let _ = agent.wait();
    let log = std::fs::read_to_string(&log_path).unwrap();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("cap") && l.contains("alert threshold"))
        .count();
    assert_eq!(warnings, 2, "one warning per crossing:\n{log}");
    assert!(
        log.lines().any(|l| l.contains("back below")),
        "a recovery is logged:\n{log}"
    );
}

/// The value of `name{volume="<volume>"}` in a scrape, if present.
fn volume_series(text: &str, name: &str, volume: &str) -> Option<f64> {
    parse(text)
        .into_iter()
        .find(|(s, _)| {
            s.starts_with(&format!("{name}{{")) && s.contains(&format!("volume=\"{volume}\""))
        })
        .map(|(_, v)| v)
}

#[test]
fn a_new_or_changed_volume_shows_up_at_once_and_a_removed_one_goes_with_its_lock_files() {
    let p = Plugin::start(BIN);
    let port = free_port();
    let log_path = p.dir.path().join("agent.log");
    let _agent = harness::Agent::start(
        &p.root(),
        &log_path,
        &[
            "--no-docker-events",
            "--no-schedule",
            // The periodic walk would take an hour: anything seen sooner came from the spool.
            "--usage-interval",
            "3600",
            "--metrics",
            &format!("127.0.0.1:{port}"),
        ],
    );
    harness::wait_for("the first usage walk", Duration::from_secs(30), || {
        scrape(port).is_some_and(|t| t.contains("allspark_usage_measured_timestamp_seconds"))
    });

    // Created: in /metrics and in Get's Status within seconds.
    let (_, v) = p.call(
        "VolumeDriver.Create",
        json!({"Name": "fresh", "Opts": {"size": "10M"}}),
    );
    assert_eq!(err_of(&v), "");
    harness::wait_for(
        "the new volume in /metrics",
        Duration::from_secs(10),
        || {
            scrape(port)
                .is_some_and(|t| volume_series(&t, "allspark_volume_bytes", "fresh").is_some())
        },
    );
    let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "fresh"}));
    assert!(
        v["Volume"]["Status"].get("used_bytes").is_some(),
        "Status has usage figures: {v}"
    );

    // Changed: 3 MB written by a container, measured at its Unmount.
    let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": "fresh", "ID": "c1"}));
    assert_eq!(err_of(&v), "", "{v}");
    let mp = std::path::PathBuf::from(v["Mountpoint"].as_str().unwrap());
    std::fs::write(mp.join("blob"), harness::noise(7, 3 << 20)).unwrap();
    let (_, v) = p.call("VolumeDriver.Unmount", json!({"Name": "fresh", "ID": "c1"}));
    assert_eq!(err_of(&v), "", "{v}");
    harness::wait_for("the new size in /metrics", Duration::from_secs(10), || {
        scrape(port)
            .and_then(|t| volume_series(&t, "allspark_volume_apparent_bytes", "fresh"))
            .is_some_and(|b| b >= (3 << 20) as f64)
    });
    let (_, v) = p.call("VolumeDriver.Get", json!({"Name": "fresh"}));
    let used = v["Volume"]["Status"]["used_bytes"].as_u64().unwrap_or(0);
    assert!(used >= 3 << 20, "{v}");
    assert!(
        v["Volume"]["Status"]["used_percent"].as_f64().unwrap() >= 30.0,
        "{v}"
    );

    // Removed: gone from /metrics, and its lock files are gone from <root>/locks.
    let locks = p.root().join("locks");
    assert!(locks.join("fresh.lock").exists());
    let (_, v) = p.call("VolumeDriver.Remove", json!({"Name": "fresh"}));
    assert_eq!(err_of(&v), "");
    assert!(
        !locks.join("fresh.lock").exists(),
        "record lock deleted at Remove"
    );
    assert!(
        !locks.join("fresh.snap").exists(),
        "snapshot lock deleted at Remove"
    );
    harness::wait_for(
        "the removed volume out of /metrics",
        Duration::from_secs(10),
        || {
            scrape(port)
                .is_some_and(|t| volume_series(&t, "allspark_volume_bytes", "fresh").is_none())
        },
    );
    assert!(!p.root().join("state/usage/fresh.json").exists());
}

/// A snapshot on stop never waits behind the usage walk of another volume: measuring a big
/// workspace after its last unmount takes seconds, and another container's stop must not.
#[test]
fn a_snapshot_on_stop_does_not_wait_for_another_volumes_usage_walk() {
    let p = Plugin::start(BIN);
    // big: 300 000 files on a tmpfs (quick to make; the agent's walk of them still takes a
    // while), bound as a device= volume.
    let device = p.bind_root().join("big");
    std::fs::create_dir_all(&device).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &device,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("nr_inodes=400k"),
    )
    .unwrap();
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _tmpfs = Unmount(&device);
    for d in 0..30 {
        let dir = device.join(format!("d{d}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..10_000 {
            std::fs::File::create(dir.join(f.to_string())).unwrap();
        }
    }
    let big_opts = json!({"type": "none", "o": "bind", "device": device.to_str().unwrap()});
    for (name, opts) in [("big", big_opts), ("ws", json!({"snapshot": "on-unmount"}))] {
        let (_, v) = p.call("VolumeDriver.Create", json!({"Name": name, "Opts": opts}));
        assert_eq!(err_of(&v), "", "{v}");
    }
    let log = || std::fs::read_to_string(p.dir.path().join("agent.log")).unwrap_or_default();
    let lines_of = |what: &str, volume: &str| -> Vec<usize> {
        log()
            .lines()
            .enumerate()
            .filter(|(_, l)| l.contains(what) && l.contains(&format!("volume={volume} ")))
            .map(|(i, _)| i)
            .collect()
    };
    let _agent = harness::Agent::offline(&p, &["--usage-interval", "3600"]);
    // The measurements the Creates asked for.
    harness::wait_for("the first measurements", Duration::from_secs(60), || {
        lines_of("volume measured", "big").len() == 1
            && lines_of("volume measured", "ws").len() == 1
    });
    let mount = |name: &str| {
        let (_, v) = p.call("VolumeDriver.Mount", json!({"Name": name, "ID": "c1"}));
        assert_eq!(err_of(&v), "", "{v}");
        std::path::PathBuf::from(v["Mountpoint"].as_str().unwrap())
    };
    let unmount = |name: &str| {
        let (_, v) = p.call("VolumeDriver.Unmount", json!({"Name": name, "ID": "c1"}));
        assert_eq!(err_of(&v), "", "{v}");
    };
    mount("big");
    let ws = mount("ws");
    std::fs::write(ws.join("file"), b"work").unwrap();
    // big's last unmount asks for a walk; the agent (polling every 50 ms) starts it, then ws's
    // container stops.
    unmount("big");
    std::thread::sleep(Duration::from_millis(150));
    unmount("ws");
    harness::wait_for("both in the agent's log", Duration::from_secs(120), || {
        !lines_of("snapshot taken", "ws").is_empty()
            && lines_of("volume measured", "big").len() == 2
    });
    assert!(
        lines_of("snapshot taken", "ws")[0] < lines_of("volume measured", "big")[1],
        "the snapshot waited for the walk:\n{}",
        log()
    );
}
