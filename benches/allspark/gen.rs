//! Deterministic workspace generator: nested directories, source-like text, object-like binaries and incompressible media.
//!
//! The same spec always gives the same tree (names, sizes, bytes). Shares of
//! the bytes: 40 % text (source code, configs, logs: gzip -6 about 3-4x),
//! 30 % object-like binaries (zero runs, tables, code-like patterns and
//! noise: about 2x), 30 % incompressible (media, archives). Sizes follow
//! log-normal laws per kind (many small sources, a few large media files).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Bump when the generated content changes.
pub const GENERATOR_VERSION: u32 = 1;

/// xorshift64* (fast, deterministic, good enough for test data).
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, never zero.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }
    #[inline]
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }
    /// Uniform in (0, 1).
    pub fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    /// Skewed index in 0..n: small indices are much more frequent (like identifiers in code).
    #[inline]
    pub fn skewed(&mut self, n: usize) -> usize {
        let a = self.below(n);
        let b = self.below(n);
        a * b / n.max(1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Text,
    Binary,
    Random,
}

/// One generated file.
#[derive(Clone, Debug)]
pub struct FileSpec {
    pub rel: PathBuf,
    pub kind: Kind,
    pub size: u64,
    pub seed: u64,
}

/// The generated tree.
pub struct Tree {
    pub files: Vec<FileSpec>,
    pub dirs: usize,
    pub bytes: u64,
}

const DIR_WORDS: &[&str] = &[
    "src",
    "lib",
    "core",
    "util",
    "tests",
    "docs",
    "assets",
    "build",
    "vendor",
    "internal",
    "api",
    "models",
    "views",
    "static",
    "img",
    "data",
    "scripts",
    "config",
    "migrations",
    "fixtures",
    "cmd",
    "pkg",
    "include",
    "target",
    "deps",
    "node_modules",
    "dist",
    "server",
    "client",
    "common",
    "proto",
    "handlers",
    "db",
    "cache",
    "logs",
    "media",
    "fonts",
    "i18n",
];
const STEMS: &[&str] = &[
    "main", "index", "mod", "utils", "helpers", "config", "types", "client", "server", "handler",
    "model", "view", "test", "spec", "schema", "parser", "lexer", "render", "store", "worker",
    "router", "auth", "session", "user", "account", "billing", "report", "export", "import",
    "image", "video", "font", "bundle", "vendor", "chunk", "data", "log", "notes", "readme",
];
const TEXT_EXT: &[&str] = &[
    "rs", "py", "js", "ts", "go", "c", "h", "md", "json", "yaml", "txt", "html", "css", "log",
    "toml", "sql", "sh",
];
const BIN_EXT: &[&str] = &["o", "so", "a", "bin", "db", "pyc", "class", "wasm", "rlib"];
const RAND_EXT: &[&str] = &[
    "png", "jpg", "zip", "gz", "mp4", "jar", "pdf", "woff2", "webp",
];
const KEYWORDS: &[&str] = &[
    "fn",
    "let",
    "if",
    "else",
    "return",
    "for",
    "while",
    "match",
    "struct",
    "impl",
    "pub",
    "use",
    "self",
    "mut",
    "const",
    "static",
    "enum",
    "trait",
    "where",
    "async",
    "await",
    "def",
    "class",
    "import",
    "from",
    "function",
    "var",
    "new",
    "this",
    "null",
    "true",
    "false",
    "int",
    "void",
    "string",
    "err",
    "nil",
    "package",
    "func",
    "type",
    "interface",
    "switch",
    "case",
    "break",
];
const PUNCT: &[&str] = &[
    "(", ")", "{", "}", "[", "]", ";", ",", ".", "::", "->", "=>", " = ", " == ", " != ", " + ",
    " - ", " * ", " && ", " || ", "&", ":", "<", ">", "?", "\"", "'", "//", "#",
];

/// Identifiers built from syllables: a fixed vocabulary per seed.
fn vocabulary(n: usize, seed: u64) -> Vec<String> {
    const SYL: &[&str] = &[
        "get", "set", "buf", "len", "idx", "map", "vec", "str", "num", "val", "key", "node",
        "tree", "list", "item", "data", "file", "path", "name", "size", "time", "read", "write",
        "open", "close", "init", "load", "save", "user", "conf", "opt", "res", "req", "ctx", "err",
        "msg", "out", "in", "max", "min", "count", "total", "first", "last", "next", "prev",
        "parse", "check", "handle", "build", "run", "start", "stop", "send", "recv", "lock",
        "state",
    ];
    let mut r = Rng::new(seed);
    (0..n)
        .map(|_| {
            let parts = 1 + r.below(3);
            let mut s = String::new();
            for p in 0..parts {
                let syl = SYL[r.below(SYL.len())];
                if p > 0 && r.below(2) == 0 {
                    s.push('_');
                    s.push_str(syl);
                } else if p > 0 {
                    let mut c = syl.chars();
                    if let Some(f) = c.next() {
                        s.push(f.to_ascii_uppercase());
                        s.push_str(c.as_str());
                    }
                } else {
                    s.push_str(syl);
                }
            }
            s
        })
        .collect()
}

/// Fill `buf` with `len` bytes of the given kind, from `seed`.
pub fn content(kind: Kind, len: usize, seed: u64, vocab: &[String], buf: &mut Vec<u8>) {
    buf.clear();
    buf.reserve(len + 256);
    let mut r = Rng::new(seed);
    match kind {
        Kind::Random => {
            while buf.len() < len {
                buf.extend_from_slice(&r.next().to_le_bytes());
            }
        }
        Kind::Text => {
            let mut depth = 0usize;
            while buf.len() < len {
                for _ in 0..depth * 4 {
                    buf.push(b' ');
                }
                match r.below(12) {
                    0 => {
                        // A comment in words.
                        buf.extend_from_slice(b"// ");
                        for _ in 0..3 + r.below(9) {
                            buf.extend_from_slice(vocab[r.skewed(vocab.len())].as_bytes());
                            buf.push(b' ');
                        }
                    }
                    1 if depth < 5 => {
                        buf.extend_from_slice(KEYWORDS[r.skewed(KEYWORDS.len())].as_bytes());
                        buf.push(b' ');
                        buf.extend_from_slice(vocab[r.skewed(vocab.len())].as_bytes());
                        buf.extend_from_slice(b"() {");
                        depth += 1;
                    }
                    2 if depth > 0 => {
                        buf.push(b'}');
                        depth -= 1;
                    }
                    _ => {
                        for t in 0..2 + r.below(8) {
                            if t > 0 {
                                buf.extend_from_slice(PUNCT[r.skewed(PUNCT.len())].as_bytes());
                            }
                            match r.below(8) {
                                0 => buf.extend_from_slice(
                                    KEYWORDS[r.skewed(KEYWORDS.len())].as_bytes(),
                                ),
                                1 => {
                                    let _ = write!(buf, "{}", r.below(4096));
                                }
                                _ => buf.extend_from_slice(vocab[r.skewed(vocab.len())].as_bytes()),
                            }
                        }
                        buf.push(b';');
                    }
                }
                buf.push(b'\n');
            }
        }
        Kind::Binary => {
            // 4 KiB pages: zero runs, tables of small integers, repeated instruction-like patterns, noise.
            let ops: Vec<[u8; 8]> = (0..64).map(|_| r.next().to_le_bytes()).collect();
            while buf.len() < len {
                match r.below(10) {
                    0..=2 => buf.resize(buf.len() + 4096, 0),
                    3..=4 => {
                        let mut v = r.below(1 << 16) as u32;
                        for _ in 0..1024 {
                            v = v.wrapping_add(r.below(64) as u32);
                            buf.extend_from_slice(&v.to_le_bytes());
                        }
                    }
                    5..=7 => {
                        for _ in 0..512 {
                            buf.extend_from_slice(&ops[r.skewed(ops.len())]);
                        }
                    }
                    _ => {
                        for _ in 0..512 {
                            buf.extend_from_slice(&r.next().to_le_bytes());
                        }
                    }
                }
            }
        }
    }
    buf.truncate(len);
}

/// Plan the tree: directories, then every file's kind, size and place.
pub fn plan(files: usize, bytes: u64, seed: u64) -> (Vec<PathBuf>, Vec<FileSpec>) {
    let mut r = Rng::new(seed ^ 0x5eed);
    let ndirs = (files / 20).max(4);
    let mut dirs: Vec<(PathBuf, usize)> = vec![(PathBuf::new(), 0)];
    for i in 1..ndirs {
        let mut parent = r.below(dirs.len());
        if dirs[parent].1 >= 7 {
            parent = 0;
        }
        let name = format!("{}-{i}", DIR_WORDS[r.below(DIR_WORDS.len())]);
        let (p, d) = (dirs[parent].0.join(name), dirs[parent].1 + 1);
        dirs.push((p, d));
    }
    // Kinds by count and log-normal raw sizes: (share of files, median bytes, sigma, share of bytes).
    let params = [
        (Kind::Text, 0.85, 4096.0, 1.3, 0.40),
        (Kind::Binary, 0.12, 24_576.0, 1.6, 0.30),
        (Kind::Random, 0.03, 262_144.0, 1.8, 0.30),
    ];
    let mut specs: Vec<FileSpec> = Vec::with_capacity(files);
    let mut raw: Vec<f64> = Vec::with_capacity(files);
    for i in 0..files {
        let u = r.unit();
        let k = if u < params[0].1 {
            0
        } else if u < params[0].1 + params[1].1 {
            1
        } else {
            2
        };
        let (kind, _, med, sigma, _) = params[k];
        raw.push(med * (sigma * r.normal()).exp());
        let (ext, stem) = match kind {
            Kind::Text => (
                TEXT_EXT[r.below(TEXT_EXT.len())],
                STEMS[r.below(STEMS.len())],
            ),
            Kind::Binary => (BIN_EXT[r.below(BIN_EXT.len())], STEMS[r.below(STEMS.len())]),
            Kind::Random => (
                RAND_EXT[r.below(RAND_EXT.len())],
                STEMS[r.below(STEMS.len())],
            ),
        };
        let dir = &dirs[r.below(dirs.len())].0;
        specs.push(FileSpec {
            rel: dir.join(format!("{stem}-{i}.{ext}")),
            kind,
            size: 0,
            seed: seed.wrapping_mul(1_000_003).wrapping_add(i as u64),
        });
    }
    // Scale each kind to its share of the bytes (no single file above 1/16 of the total).
    let cap = (bytes / 16) as f64;
    for (kind, _, _, _, share) in params {
        let sum: f64 = specs
            .iter()
            .zip(&raw)
            .filter(|(s, _)| s.kind == kind)
            .map(|(_, r)| *r)
            .sum();
        if sum == 0.0 {
            continue;
        }
        let f = share * bytes as f64 / sum;
        for (s, rw) in specs.iter_mut().zip(&raw) {
            if s.kind == kind {
                s.size = (rw * f).min(cap).round() as u64;
            }
        }
    }
    (dirs.into_iter().map(|(p, _)| p).collect(), specs)
}

/// Write one file of the plan under `root`.
pub fn write_file(
    root: &Path,
    f: &FileSpec,
    vocab: &[String],
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    content(f.kind, f.size as usize, f.seed, vocab, buf);
    let mut out = File::create(root.join(&f.rel))?;
    out.write_all(buf)
}

/// Generate the whole tree under `root` (which must exist and be empty).
pub fn generate(root: &Path, files: usize, bytes: u64) -> io::Result<Tree> {
    let seed = 20_250_000 + GENERATOR_VERSION as u64;
    let (dirs, specs) = plan(files, bytes, seed);
    for d in &dirs {
        fs::create_dir_all(root.join(d))?;
    }
    let vocab = vocabulary(3000, seed);
    let chunks: Vec<&[FileSpec]> = specs.chunks(specs.len().div_ceil(crate::nproc())).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                let vocab = &vocab;
                s.spawn(move || -> io::Result<()> {
                    let mut buf = Vec::new();
                    for f in chunk.iter() {
                        write_file(root, f, vocab, &mut buf)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("generator thread"))
    })?;
    let total = specs.iter().map(|f| f.size).sum();
    Ok(Tree {
        files: specs,
        dirs: dirs.len(),
        bytes: total,
    })
}

/// Rewrite 1 % of the files (a different 1 % for each `round`) with new content of the same kind; returns (files, bytes) rewritten.
pub fn mutate(root: &Path, tree: &Tree, round: usize) -> io::Result<(usize, u64)> {
    let n = tree.files.len();
    let picks = (0..(n / 100).max(1)).map(|j| (j * 100 + round * 37 + 13) % n);
    rewrite(root, tree, round, picks)
}

/// Like [`mutate`], the same number of files, but neighbours in path order (one corner of the
/// tree, as a build directory or `.git` changes) instead of spread over the whole tree.
pub fn mutate_local(root: &Path, tree: &Tree, round: usize) -> io::Result<(usize, u64)> {
    let n = tree.files.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| tree.files[a].rel.cmp(&tree.files[b].rel));
    let start = (round * 7919) % n;
    let picks: Vec<usize> = (0..(n / 100).max(1))
        .map(|j| order[(start + j) % n])
        .collect();
    rewrite(root, tree, round, picks.into_iter())
}

fn rewrite(
    root: &Path,
    tree: &Tree,
    round: usize,
    picks: impl Iterator<Item = usize>,
) -> io::Result<(usize, u64)> {
    let vocab = vocabulary(3000, 20_250_000 + GENERATOR_VERSION as u64);
    let mut buf = Vec::new();
    let (mut files, mut bytes) = (0, 0);
    for i in picks {
        let mut f = tree.files[i].clone();
        f.seed = f.seed.wrapping_add(0x1000_0000 * (round as u64 + 1));
        write_file(root, &f, &vocab, &mut buf)?;
        files += 1;
        bytes += f.size;
    }
    Ok((files, bytes))
}
