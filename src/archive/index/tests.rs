//! Tests of the index: tree order, the text round trip, saving and loading, corrupt and unsafe input.

use std::path::Path;

use super::*;

fn entry(path: &[u8], kind: EntryKind) -> IndexEntry {
    IndexEntry {
        path: path.to_vec(),
        kind,
        size: 42,
        mtime_ns: -1_000_000_001,
        ctime_ns: 1_700_000_000_123_456_789,
        ino: 99,
        dev: 2049,
        mode: 0o4755,
        uid: 1234,
        gid: 5678,
    }
}

fn sample() -> Index {
    Index::from_entries(vec![
        entry(b"", EntryKind::Dir),
        entry(b"a", EntryKind::Dir),
        entry(b"a/b", EntryKind::File),
        entry(b"a-c", EntryKind::File),
        entry(b"a/z", EntryKind::Symlink),
        entry(b"sp ace%\n\xff\x01", EntryKind::Fifo),
        entry("ünï".as_bytes(), EntryKind::CharDevice),
    ])
}

#[test]
fn tree_order_puts_subtrees_together() {
    let idx = sample();
    let paths: Vec<&[u8]> = idx.entries().iter().map(|e| e.path.as_slice()).collect();
    assert_eq!(paths[..5], [&b""[..], b"a", b"a/b", b"a/z", b"a-c"]);
    assert_eq!(idx.descendants(b"a").len(), 2);
    assert_eq!(idx.descendants(b"").len(), idx.len() - 1);
    assert!(idx.descendants(b"a/b").is_empty());
    assert_eq!(idx.get(b"a/z").map(|e| e.kind), Some(EntryKind::Symlink));
    assert!(idx.get(b"a/y").is_none());
}

#[test]
fn roundtrip_through_text() {
    let idx = sample();
    let mut buf = Vec::new();
    idx.write_to(&mut buf).expect("write");
    assert!(buf.is_ascii());
    let back = Index::read_from(&buf[..], Path::new("mem")).expect("read");
    assert_eq!(back, idx);
}

#[test]
fn save_and_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("index");
    sample().save(&p).expect("save");
    assert_eq!(Index::load(&p).expect("load"), sample());
}

#[test]
fn corrupt_inputs_are_errors_not_panics() {
    let mut good = Vec::new();
    sample().write_to(&mut good).expect("write");
    let text = String::from_utf8(good.clone()).expect("ascii");
    let lines: Vec<&str> = text.lines().collect();
    let mut cases: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"garbage\n".to_vec(),
        good[..good.len() - 1].to_vec(), // no final newline
        lines[..lines.len() - 1].join("\n").into(), // no end line
        format!("{}\nend 3\n", lines[..lines.len() - 1].join("\n")).into(),
        text.replace(" 4755 ", " 9999 ").into(),
        text.replace("%FF", "%G1").into(),
        text.replace("f 42", "x 42").into(),
        text.replace("d 42", "d -5").into(),
        format!("{}\n{}\n", text.trim_end(), lines[1]).into(),
    ];
    // Swap two entry lines: order violation.
    let mut swapped: Vec<&str> = lines.clone();
    swapped.swap(2, 3);
    cases.push(format!("{}\n", swapped.join("\n")).into());
    // Every truncation point.
    for cut in 0..good.len() {
        cases.push(good[..cut].to_vec());
    }
    for (i, c) in cases.iter().enumerate() {
        let r = Index::read_from(&c[..], Path::new("idx"));
        assert!(
            r.is_err(),
            "case {i} parsed: {:?}",
            String::from_utf8_lossy(c)
        );
    }
    let msg = Index::read_from(&b"allspark-index 1\n"[..], Path::new("/x/idx"))
        .expect_err("truncated")
        .to_string();
    assert!(msg.contains("/x/idx") && msg.contains("end"), "{msg}");
}

#[test]
fn unsafe_paths_in_index_are_rejected() {
    for p in ["../x", "/abs", "a//b", "a/./b", "a/"] {
        let text = format!("allspark-index 1\nf 1 1 1 1 1 644 0 0 {p}\nend 1\n");
        assert!(
            Index::read_from(text.as_bytes(), Path::new("i")).is_err(),
            "{p}"
        );
    }
}

#[test]
fn same_state_ignores_dev_only() {
    let a = entry(b"x", EntryKind::File);
    let mut b = a.clone();
    b.dev = 7;
    assert!(a.same_state(&b));
    b.ctime_ns += 1;
    assert!(!a.same_state(&b));
}
