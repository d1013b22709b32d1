//! age client-side encryption: sealing a stream for a remote's recipients or passphrase, and opening it with identity files or the passphrase.
//!
//! Every encrypted object is a plain age file (binary, not armored), so the
//! `age` CLI decrypts it: `age -d -i key.txt FILE | tar -xzf -`. Losing the
//! identity file (or the passphrase) loses the backups: nobody, allspark
//! included, can decrypt them.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use age::secrecy::SecretString;
use anyhow::{bail, Context};

use super::config::{check_private_file, parse_recipient, Encryption, RemoteConfig};

/// Read a passphrase file (one line; a trailing newline is not part of the passphrase).
fn read_passphrase(path: &Path) -> anyhow::Result<SecretString> {
    check_private_file(path, "the age passphrase file")?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the age passphrase file {}", path.display()))?;
    let line = text.trim_end_matches(['\n', '\r']);
    if line.is_empty() {
        bail!(
            "the age passphrase file {} is empty; write the passphrase on its first line",
            path.display()
        );
    }
    Ok(SecretString::from(line.to_string()))
}

/// The sealing side of a remote.
#[derive(Clone)]
pub(crate) enum Sealer {
    Recipients(Vec<age::x25519::Recipient>),
    Passphrase(SecretString),
    Plain,
}

impl Sealer {
    pub(crate) fn of(cfg: &RemoteConfig) -> anyhow::Result<Sealer> {
        Ok(match &cfg.encryption {
            Encryption::Recipients { recipients } => Sealer::Recipients(
                recipients
                    .iter()
                    .map(|r| parse_recipient(r))
                    .collect::<anyhow::Result<_>>()?,
            ),
            Encryption::Passphrase { passphrase_file } => {
                Sealer::Passphrase(read_passphrase(passphrase_file)?)
            }
            Encryption::None => Sealer::Plain,
        })
    }

    /// The suffix of object names (`.age`, or nothing when unencrypted).
    pub(crate) fn suffix(&self) -> &'static str {
        match self {
            Sealer::Plain => "",
            _ => ".age",
        }
    }

    /// Copy `input` into `output`, encrypted; returns `output` once the age stream is finished.
    pub(crate) fn seal<R: Read, W: Write>(&self, input: &mut R, output: W) -> io::Result<W> {
        let enc = match self {
            Sealer::Recipients(rs) => {
                age::Encryptor::with_recipients(rs.iter().map(|r| r as &dyn age::Recipient))
                    .map_err(io::Error::other)?
            }
            Sealer::Passphrase(p) => age::Encryptor::with_user_passphrase(p.clone()),
            Sealer::Plain => {
                let mut output = output;
                io::copy(input, &mut output)?;
                return Ok(output);
            }
        };
        let mut w = enc.wrap_output(output)?;
        io::copy(input, &mut w)?;
        w.finish()
    }

    /// Encrypt a small buffer (the manifest).
    pub(crate) fn seal_bytes(&self, bytes: &[u8]) -> io::Result<Vec<u8>> {
        self.seal(&mut &bytes[..], Vec::with_capacity(bytes.len() + 256))
    }
}

/// The opening side: identities able to decrypt a remote's objects.
pub(crate) enum Opener {
    Identities(Vec<Box<dyn age::Identity + Send + Sync>>, String),
    Plain,
}

impl Opener {
    /// From `identity` (an age identity file) when given, else the remote's configured identity file or passphrase file.
    pub(crate) fn of(cfg: &RemoteConfig, identity: Option<&Path>) -> anyhow::Result<Opener> {
        if !cfg.encryption.is_encrypted() {
            return Ok(Opener::Plain);
        }
        let file: Option<PathBuf> = identity
            .map(Path::to_path_buf)
            .or_else(|| cfg.identity_file.clone());
        if let Some(f) = file {
            check_private_file(&f, "the age identity file")?;
            let ids = age::IdentityFile::from_file(f.display().to_string())
                .and_then(|f| f.into_identities().map_err(io::Error::other))
                .with_context(|| {
                    format!(
                        "cannot read the age identity file {} (it should hold an AGE-SECRET-KEY-1… line, as age-keygen writes)",
                        f.display()
                    )
                })?;
            let ids: Vec<Box<dyn age::Identity + Send + Sync>> = ids;
            return Ok(Opener::Identities(ids, f.display().to_string()));
        }
        if let Encryption::Passphrase { passphrase_file } = &cfg.encryption {
            let p = read_passphrase(passphrase_file)?;
            let id = age::scrypt::Identity::new(p);
            return Ok(Opener::Identities(
                vec![Box::new(id)],
                format!("the passphrase in {}", passphrase_file.display()),
            ));
        }
        bail!(
            "remote {}'s objects are encrypted to age public keys: give the matching private key with --identity FILE (the file age-keygen wrote), or add the remote with --age-identity FILE",
            cfg.name
        )
    }

    /// Decrypt `input` into `output`; the error says whether the key is wrong or the object damaged.
    pub(crate) fn open<R: Read, W: Write>(&self, input: R, output: &mut W) -> anyhow::Result<u64> {
        match self {
            Opener::Plain => {
                let mut input = input;
                Ok(io::copy(&mut input, output)?)
            }
            Opener::Identities(ids, what) => {
                let d = age::Decryptor::new_buffered(io::BufReader::with_capacity(1 << 20, input))
                    .map_err(|e| explain(e, what))?;
                let mut r = d
                    .decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity))
                    .map_err(|e| explain(e, what))?;
                io::copy(&mut r, output).map_err(|e| {
                    anyhow::anyhow!(
                        "the encrypted data is damaged or truncated ({e}); this object cannot be used"
                    )
                })
            }
        }
    }
}

fn explain(e: age::DecryptError, what: &str) -> anyhow::Error {
    match e {
        age::DecryptError::NoMatchingKeys => anyhow::anyhow!(
            "{what} cannot decrypt it: it was encrypted for other keys (wrong --identity?)"
        ),
        age::DecryptError::KeyDecryptionFailed | age::DecryptError::DecryptionFailed => {
            anyhow::anyhow!(
                "decryption with {what} failed: wrong passphrase or key, or the object is damaged"
            )
        }
        age::DecryptError::Io(e) => {
            anyhow::anyhow!("the encrypted data cannot be read ({e}); the object is damaged")
        }
        other => anyhow::anyhow!(
            "not a valid age file ({other}); the object is damaged or was not written by allspark"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    #[test]
    fn sealed_bytes_open_with_the_identity_and_not_with_another() {
        let id = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let sealer = Sealer::Recipients(vec![id.to_public()]);
        let plain = b"MARKER plain text of a volume".repeat(1000);
        let sealed = sealer.seal_bytes(&plain).unwrap();
        assert!(
            !sealed.windows(6).any(|w| w == b"MARKER"),
            "ciphertext holds plaintext"
        );
        let opener = Opener::Identities(vec![Box::new(id.clone())], "test key".into());
        let mut out = Vec::new();
        opener.open(&sealed[..], &mut out).unwrap();
        assert_eq!(out, plain);
        let wrong = Opener::Identities(vec![Box::new(other)], "other key".into());
        let e = wrong.open(&sealed[..], &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("other keys"), "{e}");
        let mut damaged = sealed.clone();
        let n = damaged.len();
        damaged[n - 10] ^= 1;
        assert!(opener.open(&damaged[..], &mut Vec::new()).is_err());
        // The secret key line is what age-keygen writes.
        assert!(id
            .to_string()
            .expose_secret()
            .starts_with("AGE-SECRET-KEY-1"));
    }

    #[test]
    fn a_passphrase_seals_and_opens_and_a_wrong_one_is_refused() {
        let sealer = Sealer::Passphrase(SecretString::from("correct horse".to_string()));
        let sealed = sealer.seal_bytes(b"dump").unwrap();
        let open = |p: &str| {
            let id = age::scrypt::Identity::new(SecretString::from(p.to_string()));
            let o = Opener::Identities(vec![Box::new(id)], "the passphrase".into());
            let mut out = Vec::new();
            o.open(&sealed[..], &mut out).map(|_| out)
        };
        assert_eq!(open("correct horse").unwrap(), b"dump");
        assert!(open("wrong").is_err());
        // Unencrypted remotes pass bytes through.
        assert_eq!(Sealer::Plain.seal_bytes(b"x").unwrap(), b"x");
    }
}
