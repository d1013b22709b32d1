//! Tests of the record store: save, load and delete, the kept listing, mount references, corrupt records.

use super::*;

fn record(name: &str) -> VolumeRecord {
    VolumeRecord::managed(&name.parse().unwrap(), &[]).unwrap()
}

/// A store on a fresh state root (kept alive by the returned directory).
fn fresh_store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let layout = Layout::new(d.path());
    layout.ensure().unwrap();
    (d, Store::new(layout))
}

#[test]
fn save_load_delete() {
    let (_d, store) = fresh_store();
    let mut r = record("v1");
    store.save(&r).unwrap();
    assert_eq!(*store.load(&VolumeName::fixed("v1")).unwrap().unwrap(), r);
    r.mounts.insert("abc".into(), 2);
    store.save(&r).unwrap();
    assert_eq!(
        store
            .load(&VolumeName::fixed("v1"))
            .unwrap()
            .unwrap()
            .mount_count(),
        2,
        "cache must notice the rewrite"
    );
    assert_eq!(*store.names().unwrap(), vec![VolumeName::fixed("v1")]);
    store.delete(&VolumeName::fixed("v1")).unwrap();
    assert!(store.load(&VolumeName::fixed("v1")).unwrap().is_none());
}

#[test]
fn the_kept_listing_follows_every_record_created_or_deleted() {
    let (_d, store) = fresh_store();
    store.save(&record("a")).unwrap();
    // Past the racy window the listing is kept ...
    std::thread::sleep(LISTING_RACY_WINDOW + std::time::Duration::from_millis(100));
    assert_eq!(*store.names().unwrap(), ["a"]);
    assert!(
        store.names_cache_lock().is_some(),
        "a settled listing is kept"
    );
    // ... and a record written or deleted since is seen at once.
    store.save(&record("b")).unwrap();
    assert_eq!(*store.names().unwrap(), ["a", "b"]);
    store.delete(&VolumeName::fixed("a")).unwrap();
    assert_eq!(*store.names().unwrap(), ["b"]);
}

#[test]
fn references_are_rewritten_in_place_and_read_back_after_shrinking() {
    let (_d, store) = fresh_store();
    let layout = store.layout().clone();
    let mut r = record("v");
    store.save(&r).unwrap();
    for id in ["a", "b", "c"] {
        r.mounts.insert(format!("{id}{}", "0".repeat(60)), 1);
    }
    store.save_runtime(&r).unwrap();
    let refs = layout.refs(&VolumeName::fixed("v"));
    let (ino, len) = {
        let m = fs::metadata(&refs).unwrap();
        (m.ino(), m.len())
    };
    assert_eq!(
        store
            .load(&VolumeName::fixed("v"))
            .unwrap()
            .unwrap()
            .mount_count(),
        3
    );
    r.mounts.clear();
    store.save_runtime(&r).unwrap();
    let m = fs::metadata(&refs).unwrap();
    assert_eq!(
        (m.ino(), m.len()),
        (ino, len),
        "same file, padded, not replaced"
    );
    assert_eq!(
        store
            .load(&VolumeName::fixed("v"))
            .unwrap()
            .unwrap()
            .mount_count(),
        0
    );
}

#[test]
fn corrupt_record_is_a_clear_error_not_an_absence() {
    let (_d, store) = fresh_store();
    fs::write(
        store.layout().record(&VolumeName::fixed("bad")),
        b"{not json",
    )
    .unwrap();
    let err = store
        .load(&VolumeName::fixed("bad"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("corrupt") && err.contains("move it aside"),
        "{err}"
    );
    let (ok, bad) = store.all().unwrap();
    assert!(ok.is_empty() && bad.len() == 1);
}
