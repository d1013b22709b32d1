//! The object store behind a remote (`object_store`'s S3 client): retries with exponential backoff, timeouts, key names, and errors turned into sentences saying what to do.
//!
//! Tunables (environment): `ALLSPARK_REMOTE_RETRIES` (attempts per request
//! after the first, default 6), `ALLSPARK_REMOTE_RETRY_SECS` (give up retrying
//! a request after this long, default 120), `ALLSPARK_REMOTE_TIMEOUT_SECS`
//! (one request, default 300).

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use super::config::{self, RemoteConfig};
use crate::backup::BackupType;

/// An opened remote: its configuration and a client.
#[derive(Clone)]
pub(crate) struct Remote {
    pub cfg: RemoteConfig,
    pub store: Arc<dyn ObjectStore>,
}

fn env_u64(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Remote {
    /// Build the client (no request is made yet).
    pub(crate) fn open(cfg: &RemoteConfig) -> anyhow::Result<Remote> {
        // An endpoint that drops a connection while a request is written must be an error the
        // retries handle, not a SIGPIPE that kills the process (the CLI restores the default
        // disposition so that `allspark … | head` ends quietly).
        // SAFETY: setting a signal disposition; sigaction is process-wide and thread-safe.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        let creds = config::credentials(cfg)?;
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(15),
                base: 2.0,
            },
            max_retries: env_u64("ALLSPARK_REMOTE_RETRIES", 6) as usize,
            retry_timeout: Duration::from_secs(env_u64("ALLSPARK_REMOTE_RETRY_SECS", 120)),
        };
        let client = ClientOptions::new()
            .with_allow_http(cfg.endpoint.starts_with("http://"))
            .with_connect_timeout(Duration::from_secs(10))
            .with_timeout(Duration::from_secs(env_u64(
                "ALLSPARK_REMOTE_TIMEOUT_SECS",
                300,
            )));
        let mut b = AmazonS3Builder::new()
            .with_endpoint(cfg.endpoint.trim_end_matches('/'))
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_access_key_id(creds.access_key_id)
            .with_secret_access_key(creds.secret_access_key)
            .with_virtual_hosted_style_request(!cfg.path_style)
            .with_retry(retry)
            .with_client_options(client);
        if let Some(t) = creds.session_token {
            b = b.with_token(t);
        }
        let store = b.build().map_err(|e| {
            anyhow::anyhow!(
                "remote {}: cannot set up the S3 client ({e}); check its endpoint and region (`allspark remote ls`)",
                cfg.name
            )
        })?;
        Ok(Remote {
            cfg: cfg.clone(),
            store: Arc::new(store),
        })
    }

    /// `<prefix>/<top>`.
    fn top_key(&self, top: &str) -> Key {
        if self.cfg.prefix.is_empty() {
            Key::from(top)
        } else {
            Key::from(format!("{}/{top}", self.cfg.prefix))
        }
    }

    /// `<prefix>/backups`.
    pub(crate) fn backups_key(&self) -> Key {
        self.top_key("backups")
    }

    /// `<prefix>/snapshots` (or `<prefix>/snapshots/<volume>`).
    pub(crate) fn snapshots_key(&self, volume: Option<&str>) -> Key {
        let k = self.top_key("snapshots");
        match volume {
            Some(v) => k.join(v),
            None => k,
        }
    }

    /// `<prefix>/snapshots/<volume>/<id>`.
    pub(crate) fn snapshot_key(&self, volume: &str, id: &str) -> Key {
        self.snapshots_key(Some(volume)).join(id)
    }

    /// `<prefix>/volumes/<volume>/<object>`: the volume's record (its Create options).
    pub(crate) fn volume_key(&self, volume: &str, object: &str) -> Key {
        self.top_key("volumes").join(volume).join(object)
    }

    /// `<prefix>/backups/<type>/<name>`.
    pub(crate) fn backup_key(&self, kind: BackupType, name: &str) -> Key {
        self.backups_key().clone().join(kind.as_str()).join(name)
    }

    /// An object of a backup.
    pub(crate) fn object_key(&self, kind: BackupType, name: &str, object: &str) -> Key {
        self.backup_key(kind, name).join(object)
    }

    /// `s3://bucket/key`, for messages.
    pub(crate) fn url(&self, key: &Key) -> String {
        format!("s3://{}/{}", self.cfg.bucket, key)
    }

    /// Turn a client error into a sentence naming the remote, what was done, and what to do.
    pub(crate) fn explain(&self, what: &str, e: object_store::Error) -> anyhow::Error {
        let name = &self.cfg.name;
        let text = e.to_string();
        let creds = || {
            format!(
                "the remote {name} refused the credentials while {what} ({text}); check the access key in the {} and that it may use bucket {}",
                self.cfg.credentials_source(),
                self.cfg.bucket
            )
        };
        match e {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => anyhow::anyhow!(creds()),
            object_store::Error::NotFound { .. } => {
                anyhow::anyhow!("remote {name}: not found while {what} ({text})")
            }
            _ if ["SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "403 Forbidden"]
                .iter()
                .any(|m| text.contains(m)) =>
            {
                anyhow::anyhow!(creds())
            }
            _ if text.contains("NoSuchBucket") => anyhow::anyhow!(
                "remote {name}: bucket {} does not exist at {} while {what}; create it (allspark does not create buckets) or fix --bucket",
                self.cfg.bucket,
                self.cfg.endpoint
            ),
            _ => anyhow::anyhow!(
                "remote {name} ({}) failed while {what}, after retries: {text}; check the endpoint and the network, then run `allspark remote push {name}` to resume",
                self.cfg.endpoint
            ),
        }
    }
}

/// The runtime the remote's async client runs on for the synchronous callers (CLI, the
/// agent's schedule thread): the process's shared one.
pub(crate) fn runtime() -> anyhow::Result<&'static tokio::runtime::Runtime> {
    crate::core::runtime::shared()
}
