//! `allspark pool ls|create|usage`: the pools the plugin serves, whether each is ready, its space, and its volumes' limits; new pools from the command line.

use clap::Subcommand;
use serde_json::{json, Value};

use super::Cli;
use crate::core::layout::{HostView, Layout};
use crate::core::store::{DataLocation, Store};
use crate::fs::beneath::Missing;
use crate::pool::{btrfs, location, Registry, DEFAULT_POOL};

#[derive(Subcommand, Debug)]
pub enum PoolCmd {
    /// The configured pools: kind, where they live, ready or why not, volumes.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Make a pool now and keep it across plugin starts: SPEC is btrfs-image:PATH:SIZE (a new
    /// sparse image, formatted and mounted), btrfs:PATH (an existing btrfs mount) or dir:PATH.
    /// Running it again after an interruption completes the creation.
    Create { name: String, spec: String },
    /// Space of each pool, and per volume its size limit, whether it is enforced and what
    /// the quota groups count.
    Usage {
        #[arg(long)]
        json: bool,
    },
}

/// One pool's facts (the default pool included).
fn pools(layout: &Layout, view: &HostView) -> Vec<Value> {
    let records = Store::new(layout.clone())
        .all()
        .map(|(ok, _)| ok)
        .unwrap_or_default();
    let count = |name: &str| {
        records
            .iter()
            .filter(|r| match &r.data {
                DataLocation::Pool { pool, .. } => pool == name,
                DataLocation::Managed { .. } => name == DEFAULT_POOL,
                DataLocation::Host { .. } => false,
            })
            .count()
    };
    let mut out = vec![json!({
        "name": DEFAULT_POOL,
        "kind": "dir",
        "spec": format!("dir:{}", layout.volumes_dir().display()),
        "root": layout.volumes_dir(),
        "cow": false,
        "ready": true,
        "volumes": count(DEFAULT_POOL),
        "space": space(&layout.volumes_dir()),
    })];
    let reg = Registry::load(layout);
    for e in reg.pools.iter().filter(|e| e.creating) {
        out.push(json!({
            "name": e.name,
            "spec": e.spec,
            "created": true,
            "ready": false,
            "problem": format!("its creation was interrupted; finish it with `allspark pool create {} {}` (or restart the plugin)", e.name, e.spec),
            "volumes": 0,
        }));
    }
    for p in reg.all() {
        let created = reg.pools.iter().any(|e| e.name == p.name && e.created);
        let root = p.root_path(layout, view);
        let (ready, problem) = match p.open_root(layout, view) {
            Ok(_) => (true, None),
            Err(e) => (false, Some(e.to_string())),
        };
        out.push(json!({
            "name": p.name,
            "kind": p.spec.kind(),
            "spec": p.spec.to_string(),
            "root": root,
            "cow": p.cow(),
            "created": created,
            "ready": ready,
            "problem": problem,
            "volumes": count(&p.name),
            "space": if ready { space(&root) } else { Value::Null },
        }));
    }
    out
}

fn space(path: &std::path::Path) -> Value {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => {
            let f = s.fragment_size();
            json!({
                "total_bytes": s.blocks() * f,
                "used_bytes": s.blocks().saturating_sub(s.blocks_free()) * f,
                "available_bytes": s.blocks_available() * f,
            })
        }
        Err(_) => Value::Null,
    }
}

fn volumes(layout: &Layout, view: &HostView) -> Vec<Value> {
    let records = Store::new(layout.clone())
        .all()
        .map(|(ok, _)| ok)
        .unwrap_or_default();
    records
        .iter()
        .filter_map(|r| {
            let pool = match &r.data {
                DataLocation::Pool { pool, .. } => pool.clone(),
                DataLocation::Managed { .. } => DEFAULT_POOL.to_string(),
                DataLocation::Host { .. } => return None,
            };
            let (enforced, how, q) = crate::pool::capacity::capacity(layout, view, r);
            let q = q.or_else(|| match &r.data {
                DataLocation::Pool {
                    pool,
                    volume,
                    subdir: None,
                } => location::open(layout, view, pool, volume, None, Missing::Refuse)
                    .ok()
                    .and_then(|o| btrfs::qgroup(&o.dir).ok().flatten()),
                _ => None,
            });
            Some(json!({
                "volume": r.name,
                "pool": pool,
                "size": r.spec.size,
                "enforced": enforced,
                "enforcement": how,
                "referenced_bytes": q.map(|q| q.referenced),
                "exclusive_bytes": q.map(|q| q.exclusive),
                "limit_bytes": q.and_then(|q| q.limit),
            }))
        })
        .collect()
}

fn opt(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(super) fn run(cli: &Cli, cmd: &PoolCmd) -> anyhow::Result<()> {
    let layout = Layout::new(&cli.root);
    let view = HostView::new(cli.host_prefix.as_deref());
    match cmd {
        PoolCmd::Ls { json } => ls(&layout, &view, *json),
        PoolCmd::Create { name, spec } => create(&layout, &view, name, spec),
        PoolCmd::Usage { json } => usage(&layout, &view, *json),
    }
}

/// `pool ls`: each pool, ready or why not.
fn ls(layout: &Layout, view: &HostView, json: bool) -> anyhow::Result<()> {
    let all = pools(layout, view);
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<12} {:<8} {:>7}  SPEC",
        "NAME", "KIND", "READY", "VOLUMES"
    );
    for p in &all {
        println!(
            "{:<16} {:<12} {:<8} {:>7}  {}",
            opt(&p["name"]),
            opt(&p["kind"]),
            if p["ready"] == true { "yes" } else { "NO" },
            opt(&p["volumes"]),
            opt(&p["spec"])
        );
        if let Some(why) = p["problem"].as_str() {
            println!("    {why}");
        }
    }
    Ok(())
}

/// `pool create`: a new pool (or the completion of an interrupted creation).
fn create(layout: &Layout, view: &HostView, name: &str, spec: &str) -> anyhow::Result<()> {
    let c = crate::pool::create::create(layout, view, name, spec)?;
    println!(
        "pool {} {}: {} at {}{}",
        c.pool.name,
        if c.resumed {
            "created (an interrupted creation was completed)"
        } else {
            "created"
        },
        c.pool.spec,
        c.pool.root_path(layout, view).display(),
        if c.pool.cow() {
            format!("; volumes created with -o pool={name} are btrfs subvolumes")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// `pool usage`: each pool's space, then each pool volume's limit and quota-group figures.
fn usage(layout: &Layout, view: &HostView, json: bool) -> anyhow::Result<()> {
    let all = pools(layout, view);
    let vols = volumes(layout, view);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"pools": all, "volumes": vols}))?
        );
        return Ok(());
    }
    println!(
        "{:<16} {:>14} {:>14} {:>14}",
        "POOL", "SIZE", "USED", "AVAILABLE"
    );
    for p in &all {
        let s = &p["space"];
        println!(
            "{:<16} {:>14} {:>14} {:>14}",
            opt(&p["name"]),
            opt(&s["total_bytes"]),
            opt(&s["used_bytes"]),
            opt(&s["available_bytes"])
        );
    }
    println!();
    println!(
        "{:<24} {:<16} {:>14} {:>9} {:>14} {:>14}",
        "VOLUME", "POOL", "SIZE", "ENFORCED", "REFERENCED", "EXCLUSIVE"
    );
    for v in &vols {
        println!(
            "{:<24} {:<16} {:>14} {:>9} {:>14} {:>14}",
            opt(&v["volume"]),
            opt(&v["pool"]),
            opt(&v["size"]),
            if v["enforced"] == true { "yes" } else { "no" },
            opt(&v["referenced_bytes"]),
            opt(&v["exclusive_bytes"])
        );
    }
    Ok(())
}
