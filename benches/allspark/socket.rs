//! Driver calls straight on the plugin socket (no Docker): Get, List, Mount+Unmount at 1 and 32 clients, start-up, memory.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use crate::client::Conn;
use crate::plugin::Plugin;
use crate::report::{quantile_sorted, Section, Target, Unit};
use crate::Cfg;

/// What one timed phase of concurrent clients measured.
struct Phase {
    ops_per_sec: f64,
    /// Plugin CPU time per operation, in microseconds.
    cpu_us_per_op: f64,
    p50_us: f64,
    p99_us: f64,
    peak_rss_kib: u64,
}

fn vol_name(i: usize) -> String {
    format!("bench-{i:05}")
}

/// Run `clients` connections for `dur`, each calling `op(client, conn, n)` in a loop; `op` returns its latency.
fn phase<F>(socket: &Path, pid: u32, clients: usize, dur: Duration, op: F) -> Phase
where
    F: Fn(usize, &mut Conn, u64) -> Duration + Sync,
{
    let barrier = Barrier::new(clients + 1);
    let done = AtomicBool::new(false);
    let cpu0 = cpu_secs(pid);
    let (lat, rate, peak) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..clients)
            .map(|c| {
                let barrier = &barrier;
                let op = &op;
                s.spawn(move || {
                    let mut conn = Conn::connect(socket).expect("connect to the plugin");
                    let mut lat: Vec<u64> = Vec::with_capacity(1 << 16);
                    barrier.wait();
                    let t0 = Instant::now();
                    let deadline = t0 + dur;
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        lat.push(op(c, &mut conn, n).as_nanos() as u64);
                        n += 1;
                    }
                    (lat, n as f64 / t0.elapsed().as_secs_f64())
                })
            })
            .collect();
        let sampler = s.spawn(|| {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        barrier.wait();
        let mut all = Vec::new();
        let mut rate = 0.0;
        for w in workers {
            let (l, r) = w.join().expect("client thread");
            all.extend(l);
            rate += r;
        }
        done.store(true, Ordering::Relaxed);
        (all, rate, sampler.join().expect("sampler"))
    });
    let cpu = cpu_secs(pid) - cpu0;
    let mut lat = lat;
    lat.sort_unstable();
    Phase {
        ops_per_sec: rate,
        cpu_us_per_op: cpu * 1e6 / lat.len().max(1) as f64,
        p50_us: quantile_sorted(&lat, 0.50) as f64 / 1e3,
        p99_us: quantile_sorted(&lat, 0.99) as f64 / 1e3,
        peak_rss_kib: peak,
    }
}

/// CPU time (user + system) the process used so far, all threads, in seconds (10 ms ticks).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`: state is field 3; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no side effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Create `n` volumes with `clients` connections; returns the seconds it took.
fn create_volumes(socket: &Path, n: usize, clients: usize) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for c in 0..clients {
            s.spawn(move || {
                let mut conn = Conn::connect(socket).expect("connect");
                for i in (c..n).step_by(clients) {
                    let body = format!("{{\"Name\":\"{}\",\"Opts\":{{}}}}", vol_name(i));
                    conn.ok("VolumeDriver.Create", body.as_bytes())
                        .expect("create a volume");
                }
            });
        }
    });
    t.elapsed().as_secs_f64()
}

/// Spawn the plugin and time until a Get of an existing volume answers.
fn timed_start(p: &mut Plugin) -> f64 {
    let body = format!("{{\"Name\":\"{}\"}}", vol_name(0));
    let t0 = Instant::now();
    p.spawn();
    let deadline = t0 + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = Conn::connect(&p.socket) {
            if c.ok("VolumeDriver.Get", body.as_bytes()).is_ok() {
                return t0.elapsed().as_secs_f64();
            }
        }
        assert!(
            Instant::now() < deadline,
            "plugin did not answer: {}",
            p.log_tail()
        );
        std::thread::sleep(Duration::from_micros(500));
    }
}

pub fn run(cfg: &Cfg, bin: &Path, scratch: &Path) -> (Section, Vec<Target>) {
    let mut sec = Section::new(&format!(
        "Driver calls on the socket, no Docker ({} volumes)",
        cfg.volumes
    ));
    let root = scratch.join("root");
    let socket = scratch.join("plugin.sock");
    let mut p = Plugin::new(bin, &root, &socket, &[], &scratch.join("plugin.log"));
    p.start();

    eprintln!(
        "socket: creating {} volumes through the socket",
        cfg.volumes
    );
    let create_secs = create_volumes(&socket, cfg.volumes, 32);
    sec.add(
        "socket.create_rate",
        &format!("Create (setup, 32 clients, {} volumes)", cfg.volumes),
        Unit::PerSec,
        vec![cfg.volumes as f64 / create_secs],
    );

    // Start-up with every record on disk, and idle memory once recovery is done.
    eprintln!(
        "socket: start-up with {} volumes ({} runs)",
        cfg.volumes, cfg.runs
    );
    let (mut startup, mut idle, mut idle_hwm) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..cfg.runs {
        p.stop();
        startup.push(timed_start(&mut p));
        assert!(
            p.wait_recovered(Duration::from_secs(60)),
            "recovery did not finish: {}",
            p.log_tail()
        );
        std::thread::sleep(Duration::from_millis(500));
        let (rss, hwm) = p.memory_kib();
        idle.push(rss as f64);
        idle_hwm.push(hwm as f64);
    }
    sec.add(
        "socket.startup",
        "Start-up: spawn -> Get answers",
        Unit::Secs,
        startup,
    );
    sec.add(
        "socket.rss_idle",
        "Plugin memory idle after start-up (VmRSS)",
        Unit::KiB,
        idle,
    );
    sec.add(
        "socket.hwm_startup",
        "Plugin peak memory during start-up + recovery (VmHWM)",
        Unit::KiB,
        idle_hwm,
    );

    let pid = p.pid();
    let get_bodies: Vec<Vec<u8>> = (0..cfg.volumes)
        .map(|i| format!("{{\"Name\":\"{}\"}}", vol_name(i)).into_bytes())
        .collect();
    let get = |c: usize, conn: &mut Conn, n: u64| {
        // A cheap per-client walk over every volume.
        let i = (c as u64 * 7919 + n * 104_729) as usize % get_bodies.len();
        let t = Instant::now();
        let (status, _) = conn.call("VolumeDriver.Get", &get_bodies[i]).expect("Get");
        let d = t.elapsed();
        assert_eq!(status, 200, "Get failed");
        d
    };
    let mount_unmount = |c: usize, conn: &mut Conn, n: u64| {
        let body = format!("{{\"Name\":\"{}\",\"ID\":\"bench-{c}-{n}\"}}", vol_name(c));
        let t = Instant::now();
        let (s1, b1) = conn
            .call("VolumeDriver.Mount", body.as_bytes())
            .expect("Mount");
        let (s2, b2) = conn
            .call("VolumeDriver.Unmount", body.as_bytes())
            .expect("Unmount");
        let d = t.elapsed();
        assert!(
            s1 == 200 && s2 == 200,
            "Mount/Unmount failed: {} {}",
            String::from_utf8_lossy(&b1),
            String::from_utf8_lossy(&b2)
        );
        d
    };

    let clients = [1usize, 32];
    let mut get_rate = vec![Vec::new(); 2];
    let mut get_p50 = vec![Vec::new(); 2];
    let mut get_p99 = vec![Vec::new(); 2];
    let mut mu_rate = vec![Vec::new(); 2];
    let mut mu_p50 = vec![Vec::new(); 2];
    let mut mu_p99 = vec![Vec::new(); 2];
    let mut list = Vec::new();
    let mut list_cpu = Vec::new();
    let (mut get_cpu, mut mu_cpu) = (Vec::new(), Vec::new());
    let mut load_peak = Vec::new();
    // Warm-up: one short Get phase and a List (fills the record cache as Docker's first List would).
    let _ = phase(&socket, pid, 32, Duration::from_millis(300), get);
    Conn::connect(&socket)
        .and_then(|mut c| c.ok("VolumeDriver.List", b"{}"))
        .expect("List");
    eprintln!(
        "socket: Get, List and Mount+Unmount ({} rounds of {:?} per client count)",
        cfg.runs, cfg.phase
    );
    for _ in 0..cfg.runs {
        let mut peak = 0u64;
        for (k, &c) in clients.iter().enumerate() {
            let r = phase(&socket, pid, c, cfg.phase, get);
            get_rate[k].push(r.ops_per_sec);
            get_p50[k].push(r.p50_us);
            get_p99[k].push(r.p99_us);
            if c == 32 {
                get_cpu.push(r.cpu_us_per_op);
            }
            peak = peak.max(r.peak_rss_kib);
        }
        // A new connection each round: the plugin closes keep-alive connections idle for 10 s.
        let mut lc = Conn::connect(&socket).expect("connect");
        let cpu0 = cpu_secs(pid);
        for _ in 0..cfg.list_per_round {
            let t = Instant::now();
            let body = lc.ok("VolumeDriver.List", b"{}").expect("List");
            list.push(t.elapsed().as_secs_f64());
            let v: serde_json::Value = serde_json::from_slice(&body).expect("List JSON");
            let n = v["Volumes"].as_array().map(|a| a.len()).unwrap_or(0);
            assert_eq!(n, cfg.volumes, "List returned {n} volumes");
        }
        list_cpu.push((cpu_secs(pid) - cpu0) / cfg.list_per_round as f64);
        for (k, &c) in clients.iter().enumerate() {
            let r = phase(&socket, pid, c, cfg.phase, mount_unmount);
            mu_rate[k].push(r.ops_per_sec);
            mu_p50[k].push(r.p50_us);
            mu_p99[k].push(r.p99_us);
            if c == 32 {
                mu_cpu.push(r.cpu_us_per_op);
            }
            peak = peak.max(r.peak_rss_kib);
        }
        load_peak.push(peak as f64);
    }
    for (k, &c) in clients.iter().enumerate() {
        sec.add(
            &format!("socket.get_rate_{c}"),
            &format!("Get throughput, {c} client(s)"),
            Unit::PerSec,
            get_rate[k].clone(),
        );
        sec.add(
            &format!("socket.get_p50_{c}"),
            &format!("Get latency p50, {c} client(s)"),
            Unit::Micros,
            get_p50[k].clone(),
        );
        sec.add(
            &format!("socket.get_p99_{c}"),
            &format!("Get latency p99, {c} client(s)"),
            Unit::Micros,
            get_p99[k].clone(),
        );
    }
    sec.add(
        "socket.list",
        &format!("List of {} volumes", cfg.volumes),
        Unit::Secs,
        list,
    );
    sec.add(
        "socket.list_cpu",
        &format!("List of {} volumes: plugin CPU time per call", cfg.volumes),
        Unit::Secs,
        list_cpu,
    );
    sec.add(
        "socket.get_cpu",
        "Get: plugin CPU time per call (32 clients)",
        Unit::Micros,
        get_cpu,
    );
    for (k, &c) in clients.iter().enumerate() {
        sec.add(
            &format!("socket.mu_rate_{c}"),
            &format!("Mount+Unmount pairs/s, {c} client(s)"),
            Unit::PerSec,
            mu_rate[k].clone(),
        );
        sec.add(
            &format!("socket.mu_p50_{c}"),
            &format!("Mount+Unmount pair latency p50, {c} client(s)"),
            Unit::Micros,
            mu_p50[k].clone(),
        );
        sec.add(
            &format!("socket.mu_p99_{c}"),
            &format!("Mount+Unmount pair latency p99, {c} client(s)"),
            Unit::Micros,
            mu_p99[k].clone(),
        );
    }
    sec.add(
        "socket.mu_cpu",
        "Mount+Unmount: plugin CPU time per pair (32 clients)",
        Unit::Micros,
        mu_cpu,
    );
    sec.add(
        "socket.rss_load",
        "Plugin memory under load (peak VmRSS sampled every 20 ms)",
        Unit::KiB,
        load_peak,
    );
    // Idle again: past the plugin's 5 s housekeeping tick and tokio's 10 s
    // keep-alive of idle blocking threads (82 of them under this load).
    std::thread::sleep(Duration::from_secs(12));
    let (rss_after, hwm) = p.memory_kib();
    sec.add(
        "socket.rss_after",
        "Plugin memory idle again, 12 s after the load (VmRSS)",
        Unit::KiB,
        vec![rss_after as f64],
    );
    sec.add(
        "socket.hwm",
        "Plugin peak memory over the whole run (VmHWM)",
        Unit::KiB,
        vec![hwm as f64],
    );
    p.stop();
    sec.notes.push(format!(
        "Client: raw HTTP/1.1 keep-alive on the Unix socket, one connection and thread per client, on the same {} cores as the plugin; each round runs every phase for {:?}; figures are medians over rounds of each round's percentile. Plugin CPU time per call (utime + stime from /proc, 10 ms ticks, over a whole phase) does not depend on how busy the machine is, unlike the wall-clock figures. The plugin logs at its default level (info, one line per call) to a file.",
        crate::nproc(),
        cfg.phase
    ));
    sec.notes.push("Mount+Unmount: each client mounts and unmounts its own volume (a real bind mount through open_tree/mount_setattr/move_mount, and two runtime reference writes: in place, one pwrite under a flock, no fsync). Targets from the issue: the bare mount(MS_BIND)+umount2 pair runs at about 24 000/s on one core here, p99 90 µs.".into());

    let med = |k: &str| sec.get(k).map(|f| f.median()).unwrap_or(f64::NAN);
    let targets = vec![
        Target {
            what: "Mount+Unmount p99 with 1 client".into(),
            goal: "≤ 1 ms".into(),
            measured: Unit::Micros.show(med("socket.mu_p99_1")),
            met: Some(med("socket.mu_p99_1") <= 1000.0),
        },
        Target {
            what: "Mount+Unmount pairs/s with 32 clients".into(),
            goal: "≥ 10,000/s".into(),
            measured: Unit::PerSec.show(med("socket.mu_rate_32")),
            met: Some(med("socket.mu_rate_32") >= 10_000.0),
        },
        Target {
            what: "Get throughput (32 clients)".into(),
            goal: "≥ 20,000/s".into(),
            measured: Unit::PerSec.show(med("socket.get_rate_32")),
            met: Some(med("socket.get_rate_32") >= 20_000.0),
        },
        Target {
            what: format!("List of {} volumes", cfg.volumes),
            goal: "≤ 10 ms".into(),
            measured: Unit::Secs.show(med("socket.list")),
            met: Some(med("socket.list") <= 0.010),
        },
        Target {
            what: format!("Plugin start-up with {} volumes", cfg.volumes),
            goal: "≤ 1 s".into(),
            measured: Unit::Secs.show(med("socket.startup")),
            met: Some(med("socket.startup") <= 1.0),
        },
        Target {
            what: format!("Plugin memory, idle with {} volumes", cfg.volumes),
            goal: "≤ 15 MB".into(),
            measured: format!(
                "{} (after a load: {})",
                Unit::KiB.show(med("socket.rss_idle")),
                Unit::KiB.show(med("socket.rss_after"))
            ),
            met: Some(med("socket.rss_idle") * 1024.0 <= 15e6),
        },
    ];
    (sec, targets)
}
