//! The one tree walker: descriptor-relative, never following a symlink, in deterministic tree order, with directories scanned ahead in parallel and bounded memory.
//!
//! Every directory is opened relative to its parent's descriptor with
//! `O_NOFOLLOW | O_DIRECTORY`, so a directory swapped for a symlink during the
//! walk cannot lead outside the tree, and paths longer than `PATH_MAX` work.
//! Every entry is `lstat`ed relative to its directory (`fstatat` with
//! `AT_SYMLINK_NOFOLLOW`): the walk itself never opens or reads a file.
//!
//! Scan threads (one per core by default) open, list and stat directories
//! ahead of the walk, at most [`MAX_PREFETCH`] ahead, each holding its
//! descriptor and listing until the walk gets there; the walk itself stays in
//! one order (names sorted bytewise, a directory's entries right after it), so
//! its consumer (the archive writer, the usage counter, a tree comparison)
//! sees the same sequence every time. Memory: the listings of the directories
//! on the current path and of at most [`MAX_PREFETCH`] scanned ahead.
//!
//! The consumer is a [`Visitor`]: it is handed each directory (with its open
//! descriptor, so it can open files in it relative to it) and each other entry
//! with its `lstat`, and decides whether to descend. Where reading pays (many
//! small files), [`Options::ahead`] lets the scan threads also do per-entry
//! work of the consumer's (open and read a small file), handed over with the
//! entry; the consumer bounds what it keeps in flight.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender};
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};

/// Directories opened, listed and stat'ed ahead of the walk, at most: each
/// holds an open descriptor and its listing until the walk reaches it.
pub(crate) const MAX_PREFETCH: usize = 64;

/// A listing the caller already knows (usage's listing cache): called on the
/// scan threads with a directory's path relative to the root and its `fstat`;
/// `Some(names)` is used instead of reading the directory.
pub(crate) type ListingSource<'a> = &'a (dyn Fn(&[u8], &FileStat) -> Option<Vec<Vec<u8>>> + Sync);

/// Work done on the scan threads for a non-directory entry, given its open
/// directory, name, path relative to the root and `lstat`; what it returns is
/// handed to [`Visitor::entry`] with the entry.
pub(crate) type AheadFn<'a, A> = &'a (dyn Fn(&File, &CStr, &[u8], &FileStat) -> Option<A> + Sync);

/// Directories the walk opens but does not list (nor look inside): called on the scan
/// threads with a directory's path relative to the root (never the root's); `true` skips it.
pub(crate) type SkipDir<'a> = &'a (dyn Fn(&[u8]) -> bool + Sync);

/// How to walk.
pub(crate) struct Options<'a, A = ()> {
    /// Do not list directories on another filesystem than the root's (they are
    /// still handed to the visitor, with [`Listing::OtherFs`]).
    pub one_file_system: bool,
    /// Scan threads; 0 means one per core.
    pub threads: usize,
    /// Reuse known listings, see [`ListingSource`].
    pub listings: Option<ListingSource<'a>>,
    /// Per-entry work on the scan threads, see [`AheadFn`].
    pub ahead: Option<AheadFn<'a, A>>,
    /// Directories not to list, see [`SkipDir`] (handed to the visitor with [`Listing::Skipped`]).
    pub skip_dir: Option<SkipDir<'a>>,
}

impl<A> Default for Options<'_, A> {
    fn default() -> Self {
        Options {
            one_file_system: false,
            threads: 0,
            listings: None,
            ahead: None,
            skip_dir: None,
        }
    }
}

/// How a directory's entries were obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Listing {
    /// Read with `readdir` now.
    Read,
    /// Given by the [`ListingSource`].
    Reused,
    /// On another filesystem under [`Options::one_file_system`]: not listed.
    OtherFs,
    /// `readdir` failed: no entries.
    Failed(Errno),
    /// Not listed: [`Options::skip_dir`] said so.
    Skipped,
}

/// A directory handed to [`Visitor::dir`].
pub(crate) struct DirView<'a, A = ()> {
    /// The open directory: open its entries relative to it.
    pub file: &'a File,
    /// Path relative to the root (empty for the root).
    pub rel: &'a [u8],
    /// `fstat` of the opened directory (its `lstat` if that failed).
    pub st: &'a FileStat,
    /// Its `lstat` from the parent's listing (`None` for the root).
    pub lstat: Option<&'a FileStat>,
    pub listing: Listing,
    children: &'a [Child<A>],
}

impl<A> DirView<'_, A> {
    /// The names of its entries, sorted bytewise (empty unless listed or reused).
    pub(crate) fn names(&self) -> impl Iterator<Item = &[u8]> {
        self.children.iter().map(|c| c.name.as_slice())
    }
}

/// Why an entry could not be looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Its `lstat` failed (`ENOENT`: it vanished since the listing).
    Stat(Errno),
    /// A directory that could not be opened (`ENOENT`: vanished; `ENOTDIR` or
    /// `ELOOP`: replaced by something else since its `lstat`).
    Open(Errno),
    /// A name with a NUL byte (cannot be passed to the kernel).
    Name,
}

/// What the walk hands its consumer, in tree order.
pub(crate) trait Visitor {
    type Error;
    /// What [`Options::ahead`] produces (`()` without it).
    type Ahead: Send;
    /// A directory, the root first. `Ok(true)` descends into its entries.
    fn dir(&mut self, dir: &DirView<'_, Self::Ahead>) -> Result<bool, Self::Error>;
    /// Any entry that is not a directory, with its `lstat` and what was done
    /// for it ahead; `parent` is its open directory, `name` its name there.
    fn entry(
        &mut self,
        parent: &File,
        name: &CStr,
        rel: &[u8],
        st: &FileStat,
        ahead: Option<Self::Ahead>,
    ) -> Result<(), Self::Error>;
    /// An entry that could not be looked at; `lstat` is known for a directory
    /// that failed to open.
    fn failed(
        &mut self,
        rel: &[u8],
        lstat: Option<&FileStat>,
        why: Failure,
    ) -> Result<(), Self::Error>;
}

/// Is this `lstat` a directory?
pub(crate) fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR
}

/// `parent/name` (just `name` for the root's entries).
pub(crate) fn join_rel(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(parent.len() + 1 + name.len());
    if !parent.is_empty() {
        v.extend_from_slice(parent);
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

/// Open `name` in `dir` without following a symlink (with `O_NOATIME` where allowed).
pub(crate) fn open_at(dir: RawFd, name: &CStr, flags: OFlag) -> Result<File, Errno> {
    let base = flags | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NOFOLLOW;
    let fd = match openat(Some(dir), name, base | OFlag::O_NOATIME, Mode::empty()) {
        Err(Errno::EPERM) => openat(Some(dir), name, base, Mode::empty())?,
        r => r?,
    };
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Walk the directory open as `root` (whose `fstat` is `st`), handing every
/// entry to `v` in tree order. Only the visitor's errors stop the walk.
pub(crate) fn walk<V: Visitor>(
    root: File,
    st: FileStat,
    opts: &Options<'_, V::Ahead>,
    v: &mut V,
) -> Result<(), V::Error> {
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let cx = ScanCx {
        one_fs: opts.one_file_system.then_some(st.st_dev),
        listings: opts.listings,
        ahead: opts.ahead,
        skip_dir: opts.skip_dir,
    };
    std::thread::scope(|s| {
        let (jobs, queue) = bounded::<ScanJob<V::Ahead>>(MAX_PREFETCH);
        for _ in 0..threads {
            let queue = queue.clone();
            let cx = &cx;
            s.spawn(move || {
                for job in queue.iter() {
                    let r = cx.scan(job.parent.as_raw_fd(), &job.name, &job.rel);
                    // The walk may have stopped (a visitor error); nothing to do then.
                    let _ = job.reply.send(r);
                }
            });
        }
        let root = Scanned {
            listing: cx.list(&root, b"", &st),
            dir: Arc::new(root),
            st: Some(st),
        };
        let mut w = Walk {
            cx: &cx,
            scan: jobs,
            outstanding: 0,
        };
        // Closing the queue (dropping `w`) ends the scan threads.
        w.run(root, st, v)
    })
}

/// What the scan threads need.
struct ScanCx<'a, A> {
    /// `Some(root device)` under `one_file_system`.
    one_fs: Option<u64>,
    listings: Option<ListingSource<'a>>,
    ahead: Option<AheadFn<'a, A>>,
    skip_dir: Option<SkipDir<'a>>,
}

/// A directory opened (without following symlinks), listed and every entry
/// lstat'ed, by a scan thread ahead of the walk or by the walk itself.
struct Scanned<A> {
    dir: Arc<File>,
    /// `fstat` of the opened directory, if it worked.
    st: Option<FileStat>,
    listing: (Listing, Vec<Child<A>>),
}

type ScanReply<A> = Result<Scanned<A>, Errno>;

/// One entry of a [`Scanned`] directory.
struct Child<A> {
    name: Vec<u8>,
    /// Its lstat (taken when its directory was scanned).
    st: Result<FileStat, Errno>,
    /// For a subdirectory handed to a scan thread: its scan.
    scan: Option<Receiver<ScanReply<A>>>,
    /// For another entry: what [`Options::ahead`] did.
    ahead: Option<A>,
}

struct ScanJob<A> {
    parent: Arc<File>,
    name: CString,
    rel: Vec<u8>,
    reply: Sender<ScanReply<A>>,
}

impl<A> ScanCx<'_, A> {
    /// Open `name` in `parent` as a directory, then list and lstat its entries.
    /// `Err` when it cannot be opened.
    fn scan(&self, parent: RawFd, name: &CStr, rel: &[u8]) -> ScanReply<A> {
        let dir = open_at(parent, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let st = fstat(dir.as_raw_fd()).ok();
        let listing = match (self.one_fs, &st) {
            _ if self.skip_dir.is_some_and(|skip| skip(rel)) => (Listing::Skipped, Vec::new()),
            (Some(dev), Some(s)) if s.st_dev != dev => (Listing::OtherFs, Vec::new()),
            (_, Some(s)) => self.list(&dir, rel, s),
            (_, None) => self.list_names(&dir, rel, None),
        };
        Ok(Scanned {
            dir: Arc::new(dir),
            st,
            listing,
        })
    }

    fn list(&self, dir: &File, rel: &[u8], st: &FileStat) -> (Listing, Vec<Child<A>>) {
        let known = self.listings.and_then(|l| l(rel, st));
        self.list_names(dir, rel, known)
    }

    /// The entries of `dir` (read now, or `known`), sorted by name, each with
    /// its lstat (one `fstatat`, no open) and the work done ahead for it.
    fn list_names(
        &self,
        dir: &File,
        rel: &[u8],
        known: Option<Vec<Vec<u8>>>,
    ) -> (Listing, Vec<Child<A>>) {
        let (how, mut names) = match known {
            Some(n) => (Listing::Reused, n),
            None => match read_names(dir) {
                Ok(n) => (Listing::Read, n),
                Err(e) => return (Listing::Failed(e), Vec::new()),
            },
        };
        names.sort_unstable();
        let fd = dir.as_raw_fd();
        let children = names
            .into_iter()
            .map(|name| {
                let Ok(c) = CString::new(name.as_slice()) else {
                    return Child {
                        name,
                        st: Err(Errno::EINVAL),
                        scan: None,
                        ahead: None,
                    };
                };
                let st = fstatat(Some(fd), c.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW);
                let ahead = match (&st, self.ahead) {
                    (Ok(s), Some(f)) if !is_dir(s) => f(dir, &c, &join_rel(rel, &name), s),
                    _ => None,
                };
                Child {
                    name,
                    st,
                    scan: None,
                    ahead,
                }
            })
            .collect();
        (how, children)
    }
}

fn read_names(dir: &File) -> Result<Vec<Vec<u8>>, Errno> {
    let fd = nix::unistd::dup(dir.as_raw_fd())?;
    let mut d = nix::dir::Dir::from_fd(fd)?;
    let mut names = Vec::new();
    for ent in d.iter() {
        let ent = ent?;
        let name = ent.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    Ok(names)
}

/// One directory being walked.
struct Frame<A> {
    dir: Arc<File>,
    rel: Vec<u8>,
    children: Vec<Child<A>>,
    /// The next child to visit.
    next: usize,
    /// The next child to consider handing to a scan thread.
    submit: usize,
}

struct Walk<'c, 'a, A> {
    cx: &'c ScanCx<'a, A>,
    /// Queue of the scan threads.
    scan: Sender<ScanJob<A>>,
    /// Scans handed out and not yet taken by the walk.
    outstanding: usize,
}

impl<A: Send> Walk<'_, '_, A> {
    fn run<V: Visitor<Ahead = A>>(
        &mut self,
        root: Scanned<A>,
        st: FileStat,
        v: &mut V,
    ) -> Result<(), V::Error> {
        let mut stack: Vec<Frame<A>> = Vec::new();
        if let Some(frame) = self.enter(v, root, None, st, Vec::new())? {
            stack.push(frame);
        }
        while let Some(top) = stack.last_mut() {
            self.prefetch(top);
            let Some(slot) = top.children.get_mut(top.next) else {
                stack.pop();
                continue;
            };
            let child = std::mem::replace(
                slot,
                Child {
                    name: Vec::new(),
                    st: Err(Errno::UnknownErrno),
                    scan: None,
                    ahead: None,
                },
            );
            top.next += 1;
            let rel = join_rel(&top.rel, &child.name);
            let parent = top.dir.clone();
            if let Some(frame) = self.visit(v, &parent, child, rel)? {
                stack.push(frame);
            }
        }
        Ok(())
    }

    /// Hand a directory to the visitor and make a frame of its children if it descends.
    fn enter<V: Visitor<Ahead = A>>(
        &mut self,
        v: &mut V,
        scanned: Scanned<A>,
        lstat: Option<&FileStat>,
        fallback: FileStat,
        rel: Vec<u8>,
    ) -> Result<Option<Frame<A>>, V::Error> {
        let st = scanned.st.unwrap_or(fallback);
        let (listing, children) = scanned.listing;
        let view = DirView {
            file: &scanned.dir,
            rel: &rel,
            st: &st,
            lstat,
            listing,
            children: &children,
        };
        let descend = v.dir(&view)?;
        Ok((descend && !children.is_empty()).then(|| Frame {
            dir: scanned.dir,
            rel,
            children,
            next: 0,
            submit: 0,
        }))
    }

    fn visit<V: Visitor<Ahead = A>>(
        &mut self,
        v: &mut V,
        parent: &File,
        child: Child<A>,
        rel: Vec<u8>,
    ) -> Result<Option<Frame<A>>, V::Error> {
        let Ok(cname) = CString::new(child.name.as_slice()) else {
            v.failed(&rel, None, Failure::Name)?;
            return Ok(None);
        };
        let st = match child.st {
            Ok(st) => st,
            Err(e) => {
                v.failed(&rel, None, Failure::Stat(e))?;
                return Ok(None);
            }
        };
        if !is_dir(&st) {
            v.entry(parent, &cname, &rel, &st, child.ahead)?;
            return Ok(None);
        }
        let scanned = match child.scan {
            Some(rx) => {
                self.outstanding -= 1;
                rx.recv()
                    .unwrap_or_else(|_| self.cx.scan(parent.as_raw_fd(), &cname, &rel))
            }
            None => self.cx.scan(parent.as_raw_fd(), &cname, &rel),
        };
        match scanned {
            Ok(scanned) => self.enter(v, scanned, Some(&st), st, rel),
            Err(e) => {
                v.failed(&rel, Some(&st), Failure::Open(e))?;
                Ok(None)
            }
        }
    }

    /// Hand the next subdirectories of `frame` to the scan threads, up to the
    /// prefetch limit.
    fn prefetch(&mut self, frame: &mut Frame<A>) {
        frame.submit = frame.submit.max(frame.next);
        while self.outstanding < MAX_PREFETCH && frame.submit < frame.children.len() {
            let c = &mut frame.children[frame.submit];
            frame.submit += 1;
            if !matches!(&c.st, Ok(st) if is_dir(st)) {
                continue;
            }
            let Ok(name) = CString::new(c.name.as_slice()) else {
                continue;
            };
            let (reply, rx) = bounded(1);
            let job = ScanJob {
                parent: frame.dir.clone(),
                rel: join_rel(&frame.rel, &c.name),
                name,
                reply,
            };
            if self.scan.try_send(job).is_err() {
                // Queue full: the walk scans this one itself when it gets there.
                frame.submit -= 1;
                return;
            }
            c.scan = Some(rx);
            self.outstanding += 1;
        }
    }
}

/// Open `path` as the root of a walk (following a symlink there, as `tar -C`
/// does) and `fstat` it; an error unless it is a directory.
pub(crate) fn open_root(path: &Path) -> std::io::Result<(File, FileStat)> {
    let f = File::open(path)?;
    let st = fstat(f.as_raw_fd())?;
    if !is_dir(&st) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            format!("{} is not a directory", path.display()),
        ));
    }
    Ok((f, st))
}

#[cfg(test)]
mod tests;
