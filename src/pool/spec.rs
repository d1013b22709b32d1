//! What a pool is configured as: the spec (`dir:PATH`, `btrfs:PATH`, `btrfs-image:PATH:SIZE`) and
//! the `NAME=SPEC` definitions of `--pool` and `ALLSPARK_POOLS`, parsed and printed back.

use std::path::PathBuf;

use super::DEFAULT_POOL;

/// What backs a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolSpec {
    /// A directory (no copy-on-write: snapshots are archives).
    Dir { path: PathBuf },
    /// An existing btrfs mount: volumes are subvolumes.
    Btrfs { path: PathBuf },
    /// A sparse image file allspark creates, formats with btrfs and loop-mounts at
    /// `<root>/pools/<name>`.
    BtrfsImage { image: PathBuf, size: u64 },
    /// The filesystem of one `fs=btrfs` volume: a btrfs image of `size` at
    /// `<root>/pools/<name>.img` (each process finds it under its own state root), made and
    /// removed with the volume (`crate::pool::own`). Never configured by hand.
    Own { size: u64 },
}

const ACCEPTED: &str = "dir:PATH, btrfs:PATH (an existing btrfs mount) or btrfs-image:PATH:SIZE (e.g. btrfs-image:/var/lib/allspark-pool.img:50G), with absolute host paths";

impl PoolSpec {
    /// Parse `dir:PATH`, `btrfs:PATH` or `btrfs-image:PATH:SIZE`.
    pub fn parse(s: &str) -> Result<PoolSpec, String> {
        let bad = |why: &str| format!("invalid pool {s:?}: {why}; accepted: {ACCEPTED}");
        let abs = |p: &str| -> Result<PathBuf, String> {
            if !p.starts_with('/') || p.split('/').any(|c| c == "..") || p.contains('\0') {
                return Err(bad("the path must be absolute, without '..'"));
            }
            Ok(PathBuf::from(p))
        };
        let (kind, rest) = s.split_once(':').ok_or_else(|| bad("no kind"))?;
        match kind {
            "dir" => Ok(PoolSpec::Dir { path: abs(rest)? }),
            "btrfs" => Ok(PoolSpec::Btrfs { path: abs(rest)? }),
            "own" => Ok(PoolSpec::Own {
                size: crate::core::options::parse_size(rest).map_err(|a| bad(&a))?,
            }),
            "btrfs-image" => {
                let (path, size) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| bad("btrfs-image needs PATH:SIZE"))?;
                let size = crate::core::options::parse_size(size).map_err(|a| bad(&a))?;
                if size < crate::core::options::OwnFs::MIN_SIZE {
                    return Err(bad("a btrfs image needs at least 256M"));
                }
                Ok(PoolSpec::BtrfsImage {
                    image: abs(path)?,
                    size,
                })
            }
            _ => Err(bad(&format!("unknown kind {kind:?}"))),
        }
    }

    /// Does this pool give copy-on-write snapshots and clones?
    pub fn cow(&self) -> bool {
        !matches!(self, PoolSpec::Dir { .. })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            PoolSpec::Dir { .. } => "dir",
            PoolSpec::Btrfs { .. } => "btrfs",
            PoolSpec::BtrfsImage { .. } => "btrfs-image",
            PoolSpec::Own { .. } => "own",
        }
    }
}

impl std::fmt::Display for PoolSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolSpec::Dir { path } => write!(f, "dir:{}", path.display()),
            PoolSpec::Btrfs { path } => write!(f, "btrfs:{}", path.display()),
            PoolSpec::BtrfsImage { image, size } => {
                write!(
                    f,
                    "btrfs-image:{}:{}",
                    image.display(),
                    crate::core::options::format_size(*size)
                )
            }
            PoolSpec::Own { size } => {
                write!(f, "own:{}", crate::core::options::format_size(*size))
            }
        }
    }
}

/// One `--pool NAME=SPEC`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolDef {
    pub name: String,
    pub spec: PoolSpec,
}

/// Parse `NAME=SPEC` (from `--pool` or one item of `ALLSPARK_POOLS`).
pub fn parse_def(s: &str) -> Result<PoolDef, String> {
    let (name, spec) = s.split_once('=').ok_or_else(|| {
        format!("invalid pool {s:?}: write NAME=SPEC, e.g. fast=btrfs:/srv/ssd; SPEC is {ACCEPTED}")
    })?;
    crate::core::names::validate(name).map_err(|e| format!("invalid pool name {name:?}: {e}"))?;
    if name == DEFAULT_POOL {
        return Err(format!(
            "the pool name {DEFAULT_POOL:?} is reserved for <root>/volumes; choose another name"
        ));
    }
    let spec = PoolSpec::parse(spec)?;
    if matches!(spec, PoolSpec::Own { .. }) {
        return Err(format!(
            "invalid pool {s:?}: own: pools are made by volumes created with fs=; accepted: {ACCEPTED}"
        ));
    }
    Ok(PoolDef {
        name: name.to_string(),
        spec,
    })
}

/// The pools of `--pool` flags and `ALLSPARK_POOLS` items; a name given twice is refused.
pub fn parse_defs(items: &[String]) -> Result<Vec<PoolDef>, String> {
    let mut out: Vec<PoolDef> = Vec::new();
    for item in items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let d = parse_def(item)?;
        if out.iter().any(|o| o.name == d.name) {
            return Err(format!(
                "pool {} is configured twice; give each pool one spec",
                d.name
            ));
        }
        out.push(d);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        for s in [
            "dir:/srv/hdd",
            "btrfs:/srv/ssd",
            "btrfs-image:/var/lib/p.img:4G",
        ] {
            assert_eq!(PoolSpec::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(
            PoolSpec::parse("btrfs-image:/a:b/p.img:512M").unwrap(),
            PoolSpec::BtrfsImage {
                image: "/a:b/p.img".into(),
                size: 512 << 20
            }
        );
    }

    #[test]
    fn refusals_say_what_is_accepted() {
        for (s, hint) in [
            ("zfs:/tank", "unknown kind"),
            ("dir:relative", "absolute"),
            ("btrfs-image:/p.img", "PATH:SIZE"),
            ("btrfs-image:/p.img:10M", "at least 256M"),
            ("btrfs:/a/../b", "'..'"),
        ] {
            let e = PoolSpec::parse(s).unwrap_err();
            assert!(e.contains(hint) && e.contains("accepted"), "{s}: {e}");
        }
        assert!(parse_def("default=dir:/x")
            .unwrap_err()
            .contains("reserved"));
        assert!(parse_def("dir:/x").unwrap_err().contains("NAME=SPEC"));
        let two = parse_defs(&["a=dir:/x".into(), "a=dir:/y".into()]).unwrap_err();
        assert!(two.contains("twice"), "{two}");
    }
}
