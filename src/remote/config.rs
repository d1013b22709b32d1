//! Remote configuration files (`<root>/state/remotes/<name>.json`, mode 0600) and the credentials they point to, which are never stored, logged or shown.
//!
//! Credentials come from, in order: the remote's `credentials_file` (a
//! root-only file, `KEY=VALUE` lines or the AWS shared-credentials format:
//! `aws_access_key_id`, `aws_secret_access_key`, optionally
//! `aws_session_token`), else the environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), else the settings of the
//! managed plugin (`docker plugin set allspark AWS_ACCESS_KEY_ID=…`), read
//! through the Docker API when they are needed (plugin name: `ALLSPARK_PLUGIN`,
//! default `allspark`).

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::core::layout::Layout;
use crate::fs::durable;

/// How objects are encrypted before upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub(crate) enum Encryption {
    /// age X25519 public keys (`age1…`); decrypting needs one of their identity files.
    Recipients { recipients: Vec<String> },
    /// An age passphrase (scrypt) read from a root-only file.
    Passphrase { passphrase_file: PathBuf },
    /// No encryption: only with `remote add --unencrypted`.
    None,
}

impl Encryption {
    pub(crate) fn describe(&self) -> String {
        match self {
            Encryption::Recipients { recipients } => {
                format!("age, {} recipient(s)", recipients.len())
            }
            Encryption::Passphrase { passphrase_file } => {
                format!("age, passphrase file {}", passphrase_file.display())
            }
            Encryption::None => "NONE (unencrypted)".into(),
        }
    }
    pub(crate) fn is_encrypted(&self) -> bool {
        !matches!(self, Encryption::None)
    }
}

/// One remote, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RemoteConfig {
    pub name: String,
    /// `https://s3.eu-west-1.amazonaws.com`, `https://fra1.digitaloceanspaces.com`, `http://127.0.0.1:9000`.
    pub endpoint: String,
    pub bucket: String,
    /// Key prefix inside the bucket (no leading or trailing `/`); may be empty.
    #[serde(default)]
    pub prefix: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`), as MinIO and most test servers want.
    #[serde(default)]
    pub path_style: bool,
    /// Root-only file with the access key (else the environment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    pub encryption: Encryption,
    /// age identity file (private key) used by `remote verify --full` and `dr restore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_file: Option<PathBuf>,
}

fn default_region() -> String {
    "us-east-1".into()
}

impl RemoteConfig {
    /// A check of everything `remote add` accepts; the error says what to change.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        crate::core::names::validate(&self.name)
            .map_err(|e| anyhow::anyhow!("invalid remote name: {e}"))?;
        if !(self.endpoint.starts_with("https://") || self.endpoint.starts_with("http://")) {
            bail!(
                "--endpoint {:?} is not a URL; write e.g. https://s3.eu-west-1.amazonaws.com or http://127.0.0.1:9000",
                self.endpoint
            );
        }
        if self.bucket.is_empty() || self.bucket.contains('/') {
            bail!(
                "--bucket {:?} is not a bucket name; give the bare name (the key prefix goes in --prefix)",
                self.bucket
            );
        }
        if self.prefix.starts_with('/') || self.prefix.ends_with('/') || self.prefix.contains("//")
        {
            bail!(
                "--prefix {:?} must not start or end with '/' (write e.g. hosts/alpha)",
                self.prefix
            );
        }
        match &self.encryption {
            Encryption::Recipients { recipients } => {
                if recipients.is_empty() {
                    bail!("give at least one --age-recipient (an age1… public key)");
                }
                for r in recipients {
                    parse_recipient(r)?;
                }
            }
            Encryption::Passphrase { passphrase_file } => {
                check_private_file(passphrase_file, "the age passphrase file")?;
            }
            Encryption::None => {}
        }
        if let Some(f) = &self.credentials_file {
            check_private_file(f, "the credentials file")?;
        }
        if let Some(f) = &self.identity_file {
            check_private_file(f, "the age identity file")?;
        }
        Ok(())
    }

    /// Where credentials come from, for display (never the secret itself).
    pub(crate) fn credentials_source(&self) -> String {
        match &self.credentials_file {
            Some(f) => format!("file {}", f.display()),
            None => "environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), else the managed plugin's `docker plugin set` settings".into(),
        }
    }
}

/// An access key. `Debug` and `Display` never show the secret.
#[derive(Clone)]
pub(crate) struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credentials {{ access_key_id: {}…, secret: <hidden> }}",
            self.access_key_id.chars().take(4).collect::<String>()
        )
    }
}

/// Load the remote's credentials (file first, then environment).
pub(crate) fn credentials(cfg: &RemoteConfig) -> anyhow::Result<Credentials> {
    if let Some(f) = &cfg.credentials_file {
        check_private_file(f, "the credentials file")?;
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the credentials file {}", f.display()))?;
        return parse_credentials(&text).with_context(|| {
            format!(
                "{} holds no usable credentials; write aws_access_key_id=… and aws_secret_access_key=… lines",
                f.display()
            )
        });
    }
    let env: Vec<String> = [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v}")))
    .collect();
    if let Some(c) = credentials_in_env(&env) {
        return Ok(c);
    }
    let plugin = std::env::var("ALLSPARK_PLUGIN").unwrap_or_else(|_| "allspark".into());
    let docker = std::env::var("ALLSPARK_DOCKER")
        .unwrap_or_else(|_| crate::docker::DEFAULT_DOCKER.to_string());
    let from_plugin = crate::docker::block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            crate::docker::plugin_env(&docker, &plugin),
        )
        .await
    });
    match from_plugin {
        Ok(Ok(Ok(Some(env)))) => {
            if let Some(c) = credentials_in_env(&env) {
                return Ok(c);
            }
        }
        Ok(Ok(Ok(None))) => {}
        other => {
            let why = match other {
                Ok(Ok(Err(e))) => format!("{e:#}"),
                Ok(Err(_)) => "Docker did not answer within 10 s".into(),
                Err(e) => format!("{e:#}"),
                Ok(Ok(Ok(_))) => unreachable!("handled above"),
            };
            tracing::debug!(plugin = %plugin, reason = %why, "no credentials from the managed plugin's settings");
        }
    }
    bail!(
        "remote {} has no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (managed plugin: `docker plugin set {plugin} AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=…` while it is disabled), or add the remote again with --credentials-file FILE (a root-only file)",
        cfg.name
    )
}

/// An access key from `KEY=VALUE` environment entries (both parts non-empty).
fn credentials_in_env(env: &[String]) -> Option<Credentials> {
    let var = |k: &str| {
        env.iter()
            .filter_map(|e| e.split_once('='))
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.to_string())
            .filter(|v| !v.is_empty())
    };
    Some(Credentials {
        access_key_id: var("AWS_ACCESS_KEY_ID")?,
        secret_access_key: var("AWS_SECRET_ACCESS_KEY")?,
        session_token: var("AWS_SESSION_TOKEN"),
    })
}

/// `KEY=VALUE` or `key = value` lines (`[profile]` headers and comments ignored).
fn parse_credentials(text: &str) -> anyhow::Result<Credentials> {
    let mut kv = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty()
            || line.starts_with('#')
            || line.starts_with(';')
            || line.starts_with('[')
        {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().trim_matches('"').trim_matches('\'');
            kv.insert(k.trim().to_ascii_lowercase(), v.to_string());
        }
    }
    let id = kv.get("aws_access_key_id").filter(|v| !v.is_empty());
    let secret = kv.get("aws_secret_access_key").filter(|v| !v.is_empty());
    match (id, secret) {
        (Some(id), Some(secret)) => Ok(Credentials {
            access_key_id: id.clone(),
            secret_access_key: secret.clone(),
            session_token: kv
                .get("aws_session_token")
                .filter(|v| !v.is_empty())
                .cloned(),
        }),
        _ => bail!("aws_access_key_id or aws_secret_access_key is missing"),
    }
}

/// Refuse a secret file others can read, or that someone else owns.
pub(crate) fn check_private_file(path: &Path, what: &str) -> anyhow::Result<()> {
    let md = std::fs::metadata(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    if !md.is_file() {
        bail!("{what} {} is not a regular file", path.display());
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if md.uid() != me && md.uid() != 0 {
        bail!(
            "{what} {} belongs to uid {}, not to this user; `chown root {}` (it holds a secret)",
            path.display(),
            md.uid(),
            path.display()
        );
    }
    if md.mode() & 0o077 != 0 {
        bail!(
            "{what} {} can be read by other users (mode {:04o}); `chmod 600 {}` (it holds a secret)",
            path.display(),
            md.mode() & 0o7777,
            path.display()
        );
    }
    Ok(())
}

/// `<root>/state/remotes/<name>.json`.
pub(crate) fn path(layout: &Layout, name: &str) -> PathBuf {
    layout.remotes_dir().join(format!("{name}.json"))
}

/// Write a remote's file (0600, durable).
pub(crate) fn save(layout: &Layout, cfg: &RemoteConfig) -> anyhow::Result<()> {
    cfg.validate()?;
    let dir = layout.remotes_dir();
    durable::ensure_dir(&dir, 0o700)
        .with_context(|| format!("cannot create {}; check --root", dir.display()))?;
    let mut bytes = serde_json::to_vec_pretty(cfg)?;
    bytes.push(b'\n');
    let p = path(layout, &cfg.name);
    durable::atomic_write(&p, &bytes, 0o600)
        .with_context(|| format!("cannot write {}", p.display()))
}

/// Load remote `name`; the error lists the remotes there are.
pub(crate) fn load(layout: &Layout, name: &str) -> anyhow::Result<RemoteConfig> {
    crate::core::names::validate(name).map_err(|e| anyhow::anyhow!("invalid remote name: {e}"))?;
    let p = path(layout, name);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let known = list(layout).unwrap_or_default();
            bail!(
                "no remote named {name} (known: {}); add it with `allspark remote add {name} --endpoint … --bucket …`",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ")
                }
            )
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", p.display())),
    };
    serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is not a valid remote file; add the remote again with `allspark remote add {name} …`",
            p.display()
        )
    })
}

/// Every configured remote, by name.
pub(crate) fn list(layout: &Layout) -> anyhow::Result<Vec<RemoteConfig>> {
    let dir = layout.remotes_dir();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if let Some(name) = n.strip_suffix(".json") {
            if let Ok(bytes) = std::fs::read(e.path()) {
                match serde_json::from_slice::<RemoteConfig>(&bytes) {
                    Ok(c) => out.push(c),
                    Err(err) => {
                        tracing::warn!(remote = name, %err, "unreadable remote file skipped")
                    }
                }
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Remove remote `name`'s file (the bucket is not touched).
pub(crate) fn remove(layout: &Layout, name: &str) -> anyhow::Result<()> {
    load(layout, name)?;
    let p = path(layout, name);
    durable::remove_durable(&p).with_context(|| format!("cannot remove {}", p.display()))
}

/// Parse an age X25519 public key (`age1…`).
pub(crate) fn parse_recipient(s: &str) -> anyhow::Result<age::x25519::Recipient> {
    age::x25519::Recipient::from_str(s.trim()).map_err(|e| {
        anyhow::anyhow!(
            "{s:?} is not an age public key ({e}); give the `age1…` line `age-keygen` prints (\"Public key: …\")"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_files_in_both_formats_parse_and_never_print_the_secret() {
        let ini = "[default]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key = s3cr3t/x\n";
        let c = parse_credentials(ini).unwrap();
        assert_eq!(c.access_key_id, "AKIAEXAMPLE");
        assert_eq!(c.secret_access_key, "s3cr3t/x");
        assert!(!format!("{c:?}").contains("s3cr3t"));
        let env =
            "export AWS_ACCESS_KEY_ID=\"A1\"\nAWS_SECRET_ACCESS_KEY=B2\nAWS_SESSION_TOKEN=T\n";
        let c = parse_credentials(env).unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.secret_access_key.as_str()),
            ("A1", "B2")
        );
        assert_eq!(c.session_token.as_deref(), Some("T"));
        assert!(parse_credentials("aws_access_key_id=x\n").is_err());
    }

    #[test]
    fn bad_settings_are_refused_with_what_to_write() {
        let mut c = RemoteConfig {
            name: "offsite".into(),
            endpoint: "127.0.0.1:9000".into(),
            bucket: "b".into(),
            prefix: String::new(),
            region: default_region(),
            path_style: true,
            credentials_file: None,
            encryption: Encryption::None,
            identity_file: None,
        };
        assert!(c.validate().unwrap_err().to_string().contains("not a URL"));
        c.endpoint = "http://127.0.0.1:9000".into();
        c.validate().unwrap();
        c.prefix = "/x/".into();
        assert!(c.validate().unwrap_err().to_string().contains("--prefix"));
        c.prefix = "x".into();
        c.encryption = Encryption::Recipients {
            recipients: vec!["age1nope".into()],
        };
        assert!(c.validate().is_err());
    }
}
