//! Tests of the walker: tree order, symlinks not followed, directories not descended, reused listings.

use super::*;

#[derive(Default)]
struct Names(Vec<String>);

impl Visitor for Names {
    type Error = ();
    type Ahead = ();
    fn dir(&mut self, d: &DirView<'_>) -> Result<bool, ()> {
        self.0.push(format!("{}/", String::from_utf8_lossy(d.rel)));
        Ok(true)
    }
    fn entry(
        &mut self,
        _: &File,
        _: &CStr,
        rel: &[u8],
        _: &FileStat,
        _: Option<()>,
    ) -> Result<(), ()> {
        self.0.push(String::from_utf8_lossy(rel).into_owned());
        Ok(())
    }
    fn failed(&mut self, rel: &[u8], _: Option<&FileStat>, why: Failure) -> Result<(), ()> {
        self.0
            .push(format!("{}: {why:?}", String::from_utf8_lossy(rel)));
        Ok(())
    }
}

#[test]
fn tree_order_and_symlinks_are_not_followed() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::create_dir_all(p.join("b/c")).unwrap();
    std::fs::write(p.join("b/c/f"), b"x").unwrap();
    std::fs::write(p.join("a"), b"x").unwrap();
    std::fs::write(p.join("b.txt"), b"x").unwrap();
    std::os::unix::fs::symlink("/", p.join("b/up")).unwrap();
    let (root, st) = open_root(p).unwrap();
    for threads in [1, 4] {
        let mut v = Names::default();
        let opts = Options {
            threads,
            ..Options::default()
        };
        walk(root.try_clone().unwrap(), st, &opts, &mut v).unwrap();
        assert_eq!(v.0, ["/", "a", "b/", "b/c/", "b/c/f", "b/up", "b.txt"]);
    }
}

#[test]
fn a_directory_that_does_not_descend_hides_its_entries_and_listings_can_be_reused() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("skip/deep")).unwrap();
    std::fs::create_dir_all(d.path().join("keep")).unwrap();
    std::fs::write(d.path().join("keep/x"), b"").unwrap();
    std::fs::write(d.path().join("keep/y"), b"").unwrap();
    struct Skip(Vec<(String, Listing)>);
    impl Visitor for Skip {
        type Error = ();
        type Ahead = ();
        fn dir(&mut self, d: &DirView<'_>) -> Result<bool, ()> {
            self.0
                .push((String::from_utf8_lossy(d.rel).into_owned(), d.listing));
            Ok(d.rel != b"skip")
        }
        fn entry(
            &mut self,
            _: &File,
            _: &CStr,
            r: &[u8],
            _: &FileStat,
            _: Option<()>,
        ) -> Result<(), ()> {
            self.0
                .push((String::from_utf8_lossy(r).into_owned(), Listing::Read));
            Ok(())
        }
        fn failed(&mut self, _: &[u8], _: Option<&FileStat>, _: Failure) -> Result<(), ()> {
            Err(())
        }
    }
    // "keep" is reported as holding only `y` (a stale listing): the walk trusts it.
    let known = |rel: &[u8], _: &FileStat| (rel == b"keep").then(|| vec![b"y".to_vec()]);
    let opts = Options {
        listings: Some(&known),
        ..Options::default()
    };
    let (root, st) = open_root(d.path()).unwrap();
    let mut v = Skip(Vec::new());
    walk(root, st, &opts, &mut v).unwrap();
    let names: Vec<_> = v.0.iter().map(|(n, l)| format!("{n}:{l:?}")).collect();
    assert_eq!(names, [":Read", "keep:Reused", "keep/y:Read", "skip:Read"]);
}
