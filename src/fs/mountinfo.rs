//! `/proc/self/mountinfo`: the mount points and options it lists, with octal escapes (`\040`) decoded.

use std::path::{Path, PathBuf};

/// Mount points listed in a mountinfo text (field 5, with `\040`-style escapes decoded).
pub fn parse_mountinfo(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .collect()
}

/// The mount options (field 6) of the mount at `point`, the last one listed winning.
pub fn mount_options(text: &str, point: &Path) -> Option<String> {
    text.lines()
        .rev()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let p = f.nth(4)?;
            let o = f.next()?;
            (Path::new(&unescape(p)) == point).then(|| o.to_string())
        })
        .next()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
        99 22 8:1 /var/lib/x /var/lib/allspark/mounts/my\\040vol rw,noatime,nodiratime shared:1 - ext4 /dev/vda rw\n";

    #[test]
    fn mountinfo_decodes_escapes() {
        let pts = parse_mountinfo(SAMPLE);
        assert_eq!(pts[1], PathBuf::from("/var/lib/allspark/mounts/my vol"));
        assert_eq!(
            mount_options(SAMPLE, Path::new("/var/lib/allspark/mounts/my vol")).as_deref(),
            Some("rw,noatime,nodiratime")
        );
    }
}
