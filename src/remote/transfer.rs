//! Streaming transfers with bounded memory: a local file is read, encrypted and hashed on a blocking thread and uploaded in parts as it is produced; an object is downloaded, hashed and decrypted into a local file the same way.
//!
//! Memory stays below about `(PARTS_IN_FLIGHT + 1) × PART + QUEUE × CHUNK`
//! (≈ 30 MiB) whatever the file's size. Files smaller than one part go up in a
//! single PUT; larger ones as a multipart upload, aborted on failure (an S3
//! object appears only when its upload completes, so a partial object is never
//! visible). Each request is retried with backoff by the client
//! ([`super::client`]).

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::client::Remote;
use super::crypt::{Opener, Sealer};
use crate::backup::run::ItemProgress;
use crate::fs::hash::Hashing;

/// Size of one part of a multipart upload.
pub(crate) const PART: usize = 8 << 20;
/// Parts uploaded at the same time.
pub(crate) const PARTS_IN_FLIGHT: usize = 2;
/// Size of the chunks handed between the encrypting thread and the uploader.
const CHUNK: usize = 1 << 20;
/// Chunks queued between them.
const QUEUE: usize = 4;

/// What an upload produced: the object as stored.
#[derive(Clone, Debug)]
pub(crate) struct Uploaded {
    /// Bytes of the (encrypted) object.
    pub size: u64,
    /// sha256 of the (encrypted) object.
    pub sha256: String,
    pub e_tag: Option<String>,
    /// Size of the local file that was read (its sha256 was checked against the manifest's).
    pub plain_size: u64,
}

/// What a download produced.
#[derive(Clone, Debug)]
pub(crate) struct Downloaded {
    pub size: u64,
    pub sha256: String,
    pub plain_size: u64,
    pub plain_sha256: String,
}

/// An ETag without its quotes (servers and listings differ).
pub(crate) fn bare_etag(e: &str) -> String {
    e.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

/// A `Write` that hands full chunks to the uploader (hashed on the way by a [`Hashing`]).
struct ChunkSink {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

impl ChunkSink {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Bytes::from(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

impl Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The receiving end of the download queue as a `Read`.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.cur = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        Ok(n)
    }
}

/// Encrypt `local` with `sealer` and upload it as `key`, streaming.
///
/// The local file's sha256 is checked against `expect_sha256` while it is
/// read: a damaged local file is not uploaded (the upload is aborted).
pub(crate) async fn upload_file(
    remote: &Remote,
    key: &Key,
    local: &Path,
    sealer: &Sealer,
    expect_sha256: Option<&str>,
    progress: Option<(ItemProgress, String)>,
) -> anyhow::Result<Uploaded> {
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
    let producer = seal_in_background(local.to_path_buf(), sealer.clone(), tx);
    let what = format!("uploading {}", remote.url(key));
    let tick = |n: u64| {
        if let Some((p, item)) = &progress {
            p(item, Some(n));
        }
    };
    // The queue is dropped when this returns: a producer still sending sees it closed and stops.
    let Sent {
        first,
        multipart,
        failure,
    } = send_parts(remote, key, &what, rx, &tick).await;
    let produced = producer
        .await
        .map_err(|e| anyhow::anyhow!("the encrypting thread failed: {e}"))?;
    if let Some(e) = failure {
        abort(multipart).await;
        return Err(e);
    }
    let sealed = match produced {
        Ok(x) => x,
        Err(e) => {
            abort(multipart).await;
            return Err(e);
        }
    };
    if let Some(want) = expect_sha256 {
        if want != sealed.plain_sha256 {
            abort(multipart).await;
            anyhow::bail!(
                "{}: sha256 {} does not match its manifest ({want}); the local backup is damaged and was not uploaded, run a new backup",
                local.display(),
                sealed.plain_sha256
            );
        }
    }
    let put = match multipart {
        Some(wm) => wm.finish().await,
        None => {
            let payload = PutPayload::from_iter(first);
            remote.store.put(key, payload).await
        }
    }
    .map_err(|e| remote.explain(&what, e))?;
    if let Some((p, item)) = &progress {
        p(item, None);
    }
    Ok(Uploaded {
        size: sealed.size,
        sha256: sealed.sha256,
        e_tag: put.e_tag.as_deref().map(bare_etag),
        plain_size: sealed.plain_size,
    })
}

/// What the encrypting thread read and produced.
struct Sealed {
    size: u64,
    sha256: String,
    plain_size: u64,
    plain_sha256: String,
}

/// Read, hash and encrypt `path` on a blocking thread, sending the object in chunks to `tx`.
fn seal_in_background(
    path: PathBuf,
    sealer: Sealer,
    tx: mpsc::Sender<Bytes>,
) -> tokio::task::JoinHandle<anyhow::Result<Sealed>> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<Sealed> {
        let f = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut reader = Hashing::new(BufReader::with_capacity(CHUNK, f));
        let sink = Hashing::new(ChunkSink {
            tx,
            buf: Vec::with_capacity(CHUNK),
        });
        let mut sink = sealer
            .seal(&mut reader, sink)
            .with_context(|| format!("cannot read and encrypt {}", path.display()))?;
        sink.get_mut().send()?;
        Ok(Sealed {
            size: sink.count(),
            sha256: sink.sha256(),
            plain_size: reader.count(),
            plain_sha256: reader.sha256(),
        })
    })
}

/// Where [`send_parts`] stopped: the chunks of a first part not yet sent (a single PUT), or the
/// multipart upload under way, and the error that stopped it.
struct Sent {
    first: Vec<Bytes>,
    multipart: Option<WriteMultipart>,
    failure: Option<anyhow::Error>,
}

/// Take chunks from `rx` until it closes or a request fails. The first part decides: an object
/// smaller than a part is kept for a single PUT, a larger one becomes a multipart upload with
/// at most [`PARTS_IN_FLIGHT`] parts under way.
async fn send_parts(
    remote: &Remote,
    key: &Key,
    what: &str,
    mut rx: mpsc::Receiver<Bytes>,
    tick: &(dyn Fn(u64) + Sync),
) -> Sent {
    let mut first: Vec<Bytes> = Vec::new();
    let mut first_len = 0usize;
    let mut sent = 0u64;
    let mut multipart: Option<WriteMultipart> = None;
    let mut failure: Option<anyhow::Error> = None;
    while let Some(chunk) = rx.recv().await {
        sent += chunk.len() as u64;
        tick(sent);
        if let Some(wm) = multipart.as_mut() {
            if let Err(e) = wm.wait_for_capacity(PARTS_IN_FLIGHT).await {
                failure = Some(remote.explain(what, e));
                break;
            }
            wm.put(chunk);
            continue;
        }
        first_len += chunk.len();
        first.push(chunk);
        if first_len >= PART {
            match remote.store.put_multipart(key).await {
                Ok(up) => {
                    let mut wm = WriteMultipart::new_with_chunk_size(up, PART);
                    for c in first.drain(..) {
                        wm.put(c);
                    }
                    multipart = Some(wm);
                }
                Err(e) => {
                    failure = Some(remote.explain(what, e));
                    break;
                }
            }
        }
    }
    Sent {
        first,
        multipart,
        failure,
    }
}

/// Abort a multipart upload, if one was started (its parts are deleted; nothing becomes visible).
async fn abort(multipart: Option<WriteMultipart>) {
    if let Some(wm) = multipart {
        let _ = wm.abort().await;
    }
}

/// Upload a small buffer in one PUT; returns its ETag.
pub(crate) async fn put_bytes(
    remote: &Remote,
    key: &Key,
    bytes: Vec<u8>,
) -> anyhow::Result<Option<String>> {
    let r = remote
        .store
        .put(key, PutPayload::from(bytes))
        .await
        .map_err(|e| remote.explain(&format!("uploading {}", remote.url(key)), e))?;
    Ok(r.e_tag.as_deref().map(bare_etag))
}

/// Download a small object whole.
pub(crate) async fn get_bytes(remote: &Remote, key: &Key) -> anyhow::Result<Bytes> {
    let what = format!("downloading {}", remote.url(key));
    remote
        .store
        .get(key)
        .await
        .map_err(|e| remote.explain(&what, e))?
        .bytes()
        .await
        .map_err(|e| remote.explain(&what, e))
}

/// Download `key`, decrypt it with `opener` and write the plaintext to `dest` (created, mode 0600), streaming.
///
/// Returns the sizes and sha256 of both the object and the plaintext; the
/// caller compares them with the index and the manifest.
pub(crate) async fn download_file(
    remote: &Remote,
    key: &Key,
    dest: &Path,
    opener: Arc<Opener>,
    progress: Option<(ItemProgress, String)>,
) -> anyhow::Result<Downloaded> {
    use std::os::unix::fs::OpenOptionsExt;
    let what = format!("downloading {}", remote.url(key));
    let got = remote
        .store
        .get(key)
        .await
        .map_err(|e| remote.explain(&what, e))?;
    let mut stream = got.into_stream();
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .with_context(|| format!("cannot create {}", dest.display()))?;
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
    let consumer = open_in_background(rx, opener, out, dest.display().to_string());
    let mut hash = Sha256::new();
    let mut size = 0u64;
    let mut failure = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(b) => {
                hash.update(&b);
                size += b.len() as u64;
                if let Some((p, item)) = &progress {
                    p(item, Some(size));
                }
                if tx.send(b).await.is_err() {
                    break; // the decryptor stopped: its error says why
                }
            }
            Err(e) => {
                failure = Some(remote.explain(&what, e));
                break;
            }
        }
    }
    drop(tx);
    let opened = consumer
        .await
        .map_err(|e| anyhow::anyhow!("the decrypting thread failed: {e}"))?;
    if let Some((p, item)) = &progress {
        p(item, None);
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let (plain_size, plain_sha256) =
        opened.with_context(|| format!("{} cannot be decrypted", remote.url(key)))?;
    Ok(Downloaded {
        size,
        sha256: hex::encode(hash.finalize()),
        plain_size,
        plain_sha256,
    })
}

/// Decrypt the chunks from `rx` with `opener` on a blocking thread into `out` (flushed and
/// synced); the plaintext's size and sha256.
fn open_in_background(
    rx: mpsc::Receiver<Bytes>,
    opener: Arc<Opener>,
    out: File,
    dest_shown: String,
) -> tokio::task::JoinHandle<anyhow::Result<(u64, String)>> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, String)> {
        let reader = ChannelReader {
            rx,
            cur: Bytes::new(),
        };
        let mut w = Hashing::new(io::BufWriter::with_capacity(CHUNK, out));
        opener.open(reader, &mut w)?;
        w.flush()
            .with_context(|| format!("cannot write {dest_shown}"))?;
        w.get_ref()
            .get_ref()
            .sync_all()
            .with_context(|| format!("cannot write {dest_shown}"))?;
        Ok((w.count(), w.sha256()))
    })
}
