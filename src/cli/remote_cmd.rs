//! `allspark remote add|ls|rm|push|prune|verify`: flags and output of the remote commands.

use std::path::PathBuf;

use anyhow::bail;
use chrono::Local;
use clap::{ArgGroup, Args, Subcommand};

use super::backup_cmd::{settings, ContainerArgs, RetentionArgs, RootArg};
use super::output::{human, report_prune};
use super::progress::item_bars;
use crate::backup::Settings;
use crate::core::layout::Layout;
use crate::remote::config::{self, Encryption, RemoteConfig};
use crate::remote::{catalog, chains, client, prune, push, snapshots, verify, Remote};

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("encryption").required(true).args(["age_recipient", "age_passphrase_file", "unencrypted"])))]
pub struct AddArgs {
    /// Name of the remote (`--remote NAME`, `dr restore --from NAME`).
    pub name: String,
    /// S3 endpoint URL: https://s3.eu-west-1.amazonaws.com, https://fra1.digitaloceanspaces.com, http://127.0.0.1:9000.
    #[arg(long)]
    pub endpoint: String,
    /// Bucket (it must exist; allspark does not create buckets).
    #[arg(long)]
    pub bucket: String,
    /// Key prefix inside the bucket, e.g. hosts/alpha.
    #[arg(long, default_value = "")]
    pub prefix: String,
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// Path-style addressing (endpoint/bucket/key): MinIO, most self-hosted servers.
    #[arg(long)]
    pub path_style: bool,
    /// Root-only file with aws_access_key_id and aws_secret_access_key (default: the AWS_* environment variables).
    #[arg(long)]
    pub credentials_file: Option<PathBuf>,
    /// Encrypt to this age public key (`age1…`, from `age-keygen`); repeatable.
    #[arg(long)]
    pub age_recipient: Vec<String>,
    /// Encrypt with the passphrase on the first line of this root-only file (age scrypt).
    #[arg(long)]
    pub age_passphrase_file: Option<PathBuf>,
    /// Upload without encryption (anyone who can read the bucket can read the backups).
    #[arg(long)]
    pub unencrypted: bool,
    /// age identity file (private key) for `remote verify --full` and `dr restore` on this host.
    #[arg(long)]
    pub age_identity: Option<PathBuf>,
    /// Do not check that the bucket answers with these credentials.
    #[arg(long)]
    pub no_check: bool,
}

#[derive(Subcommand, Debug)]
pub enum RemoteCmd {
    /// Add (or replace) a remote: a root-only file <root>/state/remotes/NAME.json.
    Add(AddArgs),
    /// Without NAME: the remotes configured. With NAME: the backups and snapshot chains on that remote.
    Ls {
        name: Option<String>,
        #[arg(long)]
        json: bool,
        /// With --json: the remote's snapshots instead of its backups.
        #[arg(long)]
        snapshots: bool,
    },
    /// Forget a remote (the bucket is not touched).
    Rm { name: String },
    /// Upload every complete local backup the remote lacks and the snapshots of volumes with offsite=snapshots (resuming interrupted uploads), then apply retention there.
    Push {
        name: String,
        /// Do not apply the remote's retention afterwards.
        #[arg(long)]
        no_prune: bool,
        #[command(flatten)]
        root: RootArg,
        #[command(flatten)]
        retention: RetentionArgs,
        #[command(flatten)]
        containers: ContainerArgs,
    },
    /// Apply retention on the remote (the local calendar rules; the newest complete backup of each type is kept).
    Prune {
        name: String,
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        retention: RetentionArgs,
        #[command(flatten)]
        containers: ContainerArgs,
    },
    /// Check every remote backup's objects (size, ETag) without downloading; --full downloads, decrypts and test-extracts.
    Verify {
        name: String,
        /// Only this backup (TYPE/NAME, e.g. daily/20240131_020003).
        #[arg(long)]
        backup: Option<String>,
        #[arg(long)]
        full: bool,
        /// age identity file for --full (default: the remote's --age-identity, or its passphrase file).
        #[arg(long)]
        identity: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// --full downloads into a scratch directory under here.
        #[command(flatten)]
        root: RootArg,
    },
}

pub(super) fn run(layout: &Layout, cmd: &RemoteCmd) -> anyhow::Result<()> {
    match cmd {
        RemoteCmd::Add(a) => add(layout, a),
        RemoteCmd::Ls {
            name: None, json, ..
        } => ls_remotes(layout, *json),
        RemoteCmd::Ls {
            name: Some(name),
            json,
            snapshots: snaps,
        } => ls_remote(layout, name, *json, *snaps),
        RemoteCmd::Rm { name } => {
            config::remove(layout, name)?;
            println!("remote {name} removed (its bucket was not touched)");
            Ok(())
        }
        RemoteCmd::Push {
            name,
            no_prune,
            root,
            retention,
            containers,
        } => {
            let settings = settings(&root.backup_root, Some(retention), containers, false);
            push(layout, name, *no_prune, &settings)
        }
        RemoteCmd::Prune {
            name,
            dry_run,
            retention,
            containers,
        } => {
            let settings = settings(
                std::path::Path::new("/"),
                Some(retention),
                containers,
                false,
            );
            prune(layout, name, *dry_run, &settings)
        }
        RemoteCmd::Verify {
            name,
            backup,
            full,
            identity,
            json,
            root,
        } => verify(
            layout,
            name,
            backup.as_deref(),
            *full,
            identity.as_deref(),
            *json,
            &root.backup_root,
        ),
    }
}

/// `remote ls`: the remotes configured on this host.
fn ls_remotes(layout: &Layout, json: bool) -> anyhow::Result<()> {
    let list = config::list(layout)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:<14} {:<34} {:<24} {:<28} CREDENTIALS",
        "NAME", "ENDPOINT", "BUCKET/PREFIX", "ENCRYPTION"
    );
    for r in &list {
        println!(
            "{:<14} {:<34} {:<24} {:<28} {}",
            r.name,
            r.endpoint,
            if r.prefix.is_empty() {
                r.bucket.clone()
            } else {
                format!("{}/{}", r.bucket, r.prefix)
            },
            r.encryption.describe(),
            r.credentials_source()
        );
    }
    Ok(())
}

/// `remote ls NAME`: the backups on a remote, then its snapshot chains (`--json --snapshots`: those alone).
fn ls_remote(layout: &Layout, name: &str, json: bool, snaps: bool) -> anyhow::Result<()> {
    let cfg = config::load(layout, name)?;
    let remote = Remote::open(&cfg)?;
    let rt = client::runtime()?;
    let list = rt.block_on(catalog::list(&remote))?;
    let chains = rt.block_on(snapshots::list(&remote, None))?;
    if json && snaps {
        println!("{}", serde_json::to_string_pretty(&chains)?);
        return Ok(());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:<8} {:<16} {:<11} {:>10} {:>8} COMPLETE",
        "TYPE", "NAME", "OUTCOME", "SIZE", "OBJECTS"
    );
    for b in &list {
        println!(
            "{:<8} {:<16} {:<11} {:>10} {:>8} {}",
            b.kind.as_str(),
            b.name,
            b.outcome,
            human(b.size),
            b.objects,
            if b.complete {
                "yes"
            } else {
                "no (interrupted upload)"
            }
        );
    }
    print_snapshots(&chains);
    Ok(())
}

/// `remote push`: the local backups the remote lacks, its retention (unless `no_prune`), then the offsite snapshot chains.
fn push(layout: &Layout, name: &str, no_prune: bool, settings: &Settings) -> anyhow::Result<()> {
    let cfg = config::load(layout, name)?;
    let r = push::push(layout, &cfg, settings, Some(item_bars()))?;
    for p in &r.pushed {
        println!("pushed {p}");
    }
    for e in &r.errors {
        eprintln!("error: {e}");
    }
    println!("{}", r.summary());
    if !r.ok() {
        bail!(
            "the push to remote {name} failed (the local backups are intact); fix the cause above and run `allspark remote push {name}` again: it resumes"
        );
    }
    if !no_prune {
        let p = prune::prune(layout, &cfg, settings, Local::now().naive_local(), false)?;
        for id in &p.removed {
            println!("removed old remote backup {id}");
        }
        if !p.errors.is_empty() {
            bail!("remote retention failed: {}", p.errors.join("; "));
        }
    }
    let volumes = chains::offsite_volumes(layout)?;
    if !volumes.is_empty() {
        let c = chains::push(layout, &cfg, &volumes, Some(item_bars()))?;
        for v in &c.volumes {
            for id in &v.pushed {
                println!("pushed snapshot {}@{id}", v.volume);
            }
        }
        println!("{}", c.summary());
        if !c.ok() {
            bail!(
                "the snapshot push to remote {name} failed (the local snapshots are intact): {}; run `allspark remote push {name}` again: it resumes",
                c.errors.join("; ")
            );
        }
    }
    Ok(())
}

/// `remote prune`: the local calendar rules applied on the remote.
fn prune(layout: &Layout, name: &str, dry_run: bool, settings: &Settings) -> anyhow::Result<()> {
    let cfg = config::load(layout, name)?;
    let r = prune::prune(layout, &cfg, settings, Local::now().naive_local(), dry_run)?;
    report_prune(
        "remote backup",
        &r.decisions,
        (r.removed.len(), r.kept),
        &r.errors,
        dry_run,
    )
}

/// `remote verify`: every remote backup's objects (or one backup's), downloaded and test-extracted with `full`.
fn verify(
    layout: &Layout,
    name: &str,
    backup: Option<&str>,
    full: bool,
    identity: Option<&std::path::Path>,
    json: bool,
    scratch_root: &std::path::Path,
) -> anyhow::Result<()> {
    let cfg = config::load(layout, name)?;
    let r = verify::verify(
        &cfg,
        backup,
        full,
        identity,
        scratch_root,
        Some(item_bars()),
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        for i in &r.incomplete {
            eprintln!("warning: {i} is incomplete (an interrupted upload): never used; `allspark remote push {name}` resumes it");
        }
        for b in &r.backups {
            if b.ok {
                println!(
                    "ok     {}: {} object(s){}",
                    b.backup,
                    b.objects,
                    if full {
                        " downloaded, decrypted and test-extracted"
                    } else {
                        " present with the recorded size and ETag"
                    }
                );
            } else {
                for p in &b.problems {
                    println!("FAILED {}: {p}", b.backup);
                }
            }
        }
        for s in &r.snapshots {
            if s.ok {
                println!(
                    "ok     snapshot {}: {} object(s) present with the recorded size and ETag",
                    s.snapshot, s.objects
                );
            } else {
                for p in &s.problems {
                    println!("FAILED snapshot {}: {p}", s.snapshot);
                }
            }
        }
    }
    if !r.ok() {
        bail!("remote verification failed: {}", r.failures().join("; "));
    }
    if !json {
        println!(
            "ok: {} remote backup(s) and {} snapshot(s) of {name} verified",
            r.backups.len(),
            r.snapshots.len()
        );
    }
    Ok(())
}

/// The snapshot chains on a remote, one line per snapshot.
fn print_snapshots(list: &[snapshots::RemoteSnapshot]) {
    if list.is_empty() {
        return;
    }
    println!();
    println!(
        "{:<24} {:<25} {:<25} {:>10} COMPLETE",
        "VOLUME", "SNAPSHOT", "PARENT", "SIZE"
    );
    for s in list {
        println!(
            "{:<24} {:<25} {:<25} {:>10} {}",
            s.volume,
            s.id,
            s.parent.as_deref().unwrap_or("-"),
            human(s.size),
            match (&s.error, s.complete) {
                (Some(e), _) => format!("unreadable: {e}"),
                (None, true) => "yes".into(),
                (None, false) => "no (interrupted upload)".into(),
            }
        );
    }
}

fn add(layout: &Layout, a: &AddArgs) -> anyhow::Result<()> {
    let encryption = if !a.age_recipient.is_empty() {
        Encryption::Recipients {
            recipients: a
                .age_recipient
                .iter()
                .map(|r| r.trim().to_string())
                .collect(),
        }
    } else if let Some(f) = &a.age_passphrase_file {
        Encryption::Passphrase {
            passphrase_file: std::path::absolute(f)?,
        }
    } else {
        Encryption::None
    };
    let abs = |p: &Option<PathBuf>| -> anyhow::Result<Option<PathBuf>> {
        Ok(match p {
            Some(p) => Some(std::path::absolute(p)?),
            None => None,
        })
    };
    let cfg = RemoteConfig {
        name: a.name.clone(),
        endpoint: a.endpoint.clone(),
        bucket: a.bucket.clone(),
        prefix: a.prefix.trim_matches('/').to_string(),
        region: a.region.clone(),
        path_style: a.path_style,
        credentials_file: abs(&a.credentials_file)?,
        encryption,
        identity_file: abs(&a.age_identity)?,
    };
    cfg.validate()?;
    if !a.no_check {
        let remote = Remote::open(&cfg)?;
        let n = client::runtime()?
            .block_on(catalog::list(&remote))
            .map_err(|e| {
                anyhow::anyhow!("{e:#}; the remote was not added (--no-check adds it anyway)")
            })?
            .len();
        println!(
            "remote {} answers: {}/{} holds {n} backup(s)",
            cfg.name,
            cfg.bucket,
            remote.backups_key()
        );
    }
    config::save(layout, &cfg)?;
    if !cfg.encryption.is_encrypted() {
        eprintln!("warning: remote {} is UNENCRYPTED: anyone who can read the bucket can read the backups", cfg.name);
    } else {
        eprintln!("note: keep the age identity (private key) or passphrase somewhere other than this host: without it the remote backups cannot be decrypted by anyone");
    }
    println!(
        "remote {} added ({}), encryption: {}",
        cfg.name,
        config::path(layout, &cfg.name).display(),
        cfg.encryption.describe()
    );
    Ok(())
}
