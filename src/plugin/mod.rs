//! The `allspark plugin` process: one server per root, listen first, recover after, stop on SIGTERM/SIGINT.

pub mod api;
pub mod driver;
pub(crate) mod error;
pub mod mounts;
pub(crate) mod pool_volume;
pub mod protocol;
pub mod server;
pub mod status;

use std::io::{Read, Seek, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::signal::unix::{signal, SignalKind};

use crate::core::layout::Layout;
use crate::fs::durable::{FileLock, LockKind};
use crate::plugin::api::DriverApi;
use crate::plugin::driver::DriverSettings;

/// Everything `allspark plugin` needs.
pub struct PluginConfig {
    pub root: PathBuf,
    pub socket: PathBuf,
    pub settings: DriverSettings,
    /// Storage pools besides the default one (see [`crate::pool`]).
    pub pools: Vec<crate::pool::PoolDef>,
}

/// Hold the root's plugin lock, or say who holds it.
pub fn lock_root(layout: &Layout) -> anyhow::Result<FileLock> {
    let path = layout.plugin_lock();
    match FileLock::try_acquire(&path, LockKind::Exclusive)
        .with_context(|| format!("cannot open {}", path.display()))?
    {
        Some(lock) => {
            let mut f = lock.file();
            f.set_len(0)?;
            f.rewind()?;
            writeln!(f, "{}", std::process::id())?;
            f.sync_all()?;
            Ok(lock)
        }
        None => {
            let mut holder = String::new();
            let _ = std::fs::File::open(&path).and_then(|mut f| f.read_to_string(&mut holder));
            bail!(
                "another allspark plugin (pid {}) already serves {}; stop it first (only one plugin may own a root)",
                holder.trim(),
                layout.root.display()
            )
        }
    }
}

/// glibc gives every thread that allocates its own arena (up to 8 per core)
/// and keeps what was freed in each: after a burst of calls on many blocking
/// threads (a `List` of 10 000 volumes is a few MB of short-lived data) the
/// plugin stayed at ~57 MB resident instead of ~14. Two arenas are plenty for
/// a process whose calls are short (see docs/benchmarks.md).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt is thread-safe and only changes allocator settings.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Hand memory freed after a burst of calls back to the kernel (every few seconds, cheap when idle).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe and only releases free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Run the plugin until a signal asks it to stop.
pub fn run(cfg: PluginConfig) -> anyhow::Result<()> {
    let layout = Layout::new(&cfg.root);
    layout
        .ensure()
        .with_context(|| format!("cannot create the state root {}", cfg.root.display()))?;
    let _root_lock = lock_root(&layout)?;
    // Pools before the socket: a Create with pool= finds its pool ready (images created,
    // formatted and mounted here; remounted when found unmounted later).
    let registry = crate::pool::setup(&layout, &cfg.settings.view, &cfg.pools)
        .context("cannot record the storage pools")?;
    for p in registry.all() {
        tracing::info!(pool = %p.name, spec = %p.spec, id = %p.id, "pool configured");
    }
    let driver = Arc::new(
        host_driver(layout.clone(), cfg.settings.clone()).with_context(|| {
            format!(
                "cannot prepare the mount directory {}",
                cfg.settings.mount_dir.display()
            )
        })?,
    );
    limit_malloc_arenas();
    // The runtime only waits for signals and ticks; calls are served on the server's own
    // threads (see [`server`]).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // Handlers first: a SIGTERM that arrives as soon as the socket answers still drains.
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let listener = server::bind(&cfg.socket).with_context(|| format!("cannot listen on {}", cfg.socket.display()))?;
        tracing::info!(socket = %cfg.socket.display(), root = %cfg.root.display(), "allspark plugin listening");
        let server = server::Server::new(listener);
        let stopper = server.stopper();
        let recover = driver.clone();
        tokio::task::spawn_blocking(move || {
            match recover.reconcile() {
                Ok(()) => tracing::info!("recovery done: references match the live mounts"),
                Err(e) => tracing::error!(%e, "recovery failed"),
            }
            // Recovery read every record once: give that memory back now, not at the next tick.
            release_free_memory();
        });
        let stats_path = layout.root.join("state").join("plugin-stats.json");
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                let p = stats_path.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let _ = crate::core::callstats::flush(&p);
                    release_free_memory();
                })
                .await;
            }
        });
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            tracing::info!("signal received: finishing calls in flight");
            stopper.stop();
        });
        let api = Arc::new(DriverApi { driver });
        tokio::task::spawn_blocking(move || server.serve(api))
            .await
            .context("the server thread failed")?;
        let _ = std::fs::remove_file(&cfg.socket);
        tracing::info!("allspark plugin stopped");
        anyhow::Ok(())
    })
}

/// The one place a [`driver::Driver`] is built on the real system calls: the plugin process,
/// and commands that create, remove or move volumes.
pub fn host_driver(
    layout: crate::core::layout::Layout,
    settings: driver::DriverSettings,
) -> std::io::Result<driver::Driver> {
    driver::Driver::new(layout, Arc::new(mounts::LinuxSys::new()), settings)
}
