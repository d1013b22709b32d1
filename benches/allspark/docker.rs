//! Through dockerd: container start with an allspark / local / bind volume, and volume create + rm, interleaved.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::common;
use crate::plugin::{run_ok, Plugin};
use crate::report::{Section, Target, Unit};
use crate::Cfg;

/// Wall time of one `docker ARGS…` (panics unless it succeeds).
fn docker_secs(args: &[&str]) -> f64 {
    let t = Instant::now();
    run_ok(Command::new("docker").args(args));
    t.elapsed().as_secs_f64()
}

/// Removes the bench's volumes even when the bench panics.
struct Volumes(Vec<String>);

impl Drop for Volumes {
    fn drop(&mut self) {
        for v in &self.0 {
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f", v])
                .output();
        }
    }
}

pub fn run(cfg: &Cfg, bin: &Path, scratch: &Path) -> (Vec<Section>, Vec<Target>) {
    let mut start =
        Section::new("Container start through dockerd: `docker run --rm -v V:/d busybox true`");
    let mut life = Section::new(
        "Volume lifecycle through dockerd: `docker volume create` + `docker volume rm`",
    );
    if !common::docker_available() {
        let why = "no Docker daemon answers `docker info`".to_string();
        start.skipped = Some(why.clone());
        life.skipped = Some(why);
        return (vec![start, life], vec![]);
    }
    let image = common::ensure_busybox_image();
    let pid = std::process::id();
    let driver = format!("allspark-bench-{pid}");
    let socket = Path::new("/run/docker/plugins").join(format!("{driver}.sock"));
    let binds = scratch.join("binds");
    let bind_dev = binds.join("bind-volume");
    std::fs::create_dir_all(&bind_dev).expect("bind directory");
    let mut p = Plugin::new(
        bin,
        &scratch.join("root"),
        &socket,
        std::slice::from_ref(&binds),
        &scratch.join("plugin.log"),
    );
    p.start();

    let as_vol = format!("bench-allspark-{pid}");
    let local_vol = format!("bench-local-{pid}");
    let bind_vol = format!("bench-bind-{pid}");
    let mut vols = Volumes(vec![as_vol.clone(), local_vol.clone(), bind_vol.clone()]);
    run_ok(Command::new("docker").args(["volume", "create", "-d", &driver, &as_vol]));
    run_ok(Command::new("docker").args(["volume", "create", &local_vol]));
    let device = format!("device={}", bind_dev.display());
    run_ok(Command::new("docker").args([
        "volume",
        "create",
        "-o",
        "type=none",
        "-o",
        "o=bind",
        "-o",
        &device,
        &bind_vol,
    ]));

    // 1. Container start, four variants interleaved (rotated each round).
    let variants: Vec<(&str, &str, Option<String>)> = vec![
        ("none", "no volume", None),
        ("local", "`local` volume", Some(local_vol.clone())),
        (
            "bind",
            "`local` bind (type=none, o=bind)",
            Some(bind_vol.clone()),
        ),
        (
            "allspark",
            "allspark volume (legacy socket)",
            Some(as_vol.clone()),
        ),
    ];
    let run_once = |vol: &Option<String>| {
        let mut args = vec!["run".to_string(), "--rm".into()];
        if let Some(v) = vol {
            args.push("-v".into());
            args.push(format!("{v}:/d"));
        }
        args.push(image.clone());
        args.push("true".into());
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        docker_secs(&a)
    };
    eprintln!(
        "docker: container start, {} warm-up + {} timed rounds of {} variants",
        cfg.docker_warmup,
        cfg.docker_runs,
        variants.len()
    );
    for _ in 0..cfg.docker_warmup {
        for (_, _, v) in &variants {
            run_once(v);
        }
    }
    let mut times = vec![Vec::new(); variants.len()];
    for round in 0..cfg.docker_runs {
        for k in 0..variants.len() {
            let i = (k + round) % variants.len();
            times[i].push(run_once(&variants[i].2));
        }
    }
    for (i, (key, label, _)) in variants.iter().enumerate() {
        start.add(&format!("start.{key}"), label, Unit::Secs, times[i].clone());
    }
    let r_local = start.ratio("start.allspark", "start.local");
    start.ratio("start.bind", "start.local");
    start.ratio("start.local", "start.none");
    let r_bind = {
        let a = start
            .get("start.allspark")
            .map(|f| f.median())
            .unwrap_or(f64::NAN);
        let b = start
            .get("start.bind")
            .map(|f| f.median())
            .unwrap_or(f64::NAN);
        a / b
    };
    start.notes.push(format!(
        "Image {image} (static busybox, imported offline); storage driver {}. Each round runs every variant once, in a rotated order, to cancel drift; {} warm-up rounds first. allspark / bind = {:.3}.",
        crate::storage_driver(),
        cfg.docker_warmup,
        r_bind
    ));

    // 2. Volume create + rm, allspark vs local, interleaved.
    eprintln!("docker: volume create + rm, {} rounds", cfg.docker_runs);
    let kinds = [("allspark", Some(driver.as_str())), ("local", None)];
    let mut create = vec![Vec::new(); 2];
    let mut rm = vec![Vec::new(); 2];
    let mut both = vec![Vec::new(); 2];
    for round in 0..cfg.docker_warmup + cfg.docker_runs {
        for k in 0..kinds.len() {
            let i = (k + round) % kinds.len();
            let name = format!("bench-life-{}-{pid}-{round}", kinds[i].0);
            vols.0.push(name.clone());
            let mut args = vec!["volume", "create"];
            if let Some(d) = kinds[i].1 {
                args.extend(["-d", d]);
            }
            args.push(&name);
            let c = docker_secs(&args);
            let r = docker_secs(&["volume", "rm", &name]);
            vols.0.pop();
            if round >= cfg.docker_warmup {
                create[i].push(c);
                rm[i].push(r);
                both[i].push(c + r);
            }
        }
    }
    for (i, (key, _)) in kinds.iter().enumerate() {
        let label = if *key == "allspark" {
            "allspark"
        } else {
            "`local`"
        };
        life.add(
            &format!("life.{key}"),
            &format!("{label}: create + rm"),
            Unit::Secs,
            both[i].clone(),
        );
        life.add(
            &format!("life.{key}.create"),
            &format!("{label}: create"),
            Unit::Secs,
            create[i].clone(),
        );
        life.add(
            &format!("life.{key}.rm"),
            &format!("{label}: rm"),
            Unit::Secs,
            rm[i].clone(),
        );
    }
    let r_life = life.ratio("life.allspark", "life.local");
    life.ratio("life.allspark.create", "life.local.create");
    life.ratio("life.allspark.rm", "life.local.rm");
    life.notes.push(
        "Each figure is the wall time of the docker CLI command(s); both drivers alternate within every round.".into(),
    );

    drop(vols);
    p.stop();
    let _ = std::fs::remove_file(&socket);

    let r_local = r_local.unwrap_or(f64::NAN);
    let targets = vec![
        Target {
            what: "Container start, allspark / `local` volume".into(),
            goal: "≤ 1.05".into(),
            measured: format!("{r_local:.3} (vs bind {r_bind:.3})"),
            met: Some(r_local <= 1.05),
        },
        Target {
            what: "Volume create + rm, allspark / `local`".into(),
            goal: "(no target)".into(),
            measured: format!("{:.3}", r_life.unwrap_or(f64::NAN)),
            met: None,
        },
    ];
    (vec![start, life], targets)
}
