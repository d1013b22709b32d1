//! The one tokio runtime of a process's synchronous callers (CLI commands, the agent's job threads): the Docker API façade (`crate::docker`), backups and the remote client block on it instead of each building a runtime per call.

use std::sync::OnceLock;

use tokio::runtime::Runtime;

static SHARED: OnceLock<Runtime> = OnceLock::new();

/// The process's shared runtime (two workers, I/O and timers), made on first use. Any thread
/// may block on it, several at once; it must not be blocked on from inside async code.
pub(crate) fn shared() -> anyhow::Result<&'static Runtime> {
    if let Some(rt) = SHARED.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .thread_name("allspark-io")
        .enable_all()
        .build()
        .map_err(|e| {
            anyhow::anyhow!("cannot start a runtime for the Docker API and the remote client: {e}")
        })?;
    // Two threads racing here: the loser's runtime is dropped (from a plain thread), the
    // winner's is shared.
    Ok(SHARED.get_or_init(|| rt))
}

#[cfg(test)]
mod tests {
    #[test]
    fn threads_share_one_runtime_and_may_block_on_it_together() {
        let a = super::shared().unwrap() as *const _ as usize;
        let handles: Vec<_> = (0..4)
            .map(|i| {
                std::thread::spawn(move || {
                    let rt = super::shared().unwrap();
                    let got = rt.block_on(async move {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        i
                    });
                    (rt as *const _ as usize, got)
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            let (ptr, got) = h.join().unwrap();
            assert_eq!(ptr, a);
            assert_eq!(got, i);
        }
    }
}
