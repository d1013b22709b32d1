//! Copying a directory tree with every attribute, through the archive engine's writer and reader (one code path for fidelity).

use std::io::{BufReader, BufWriter};
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::archive::{self, ArchiveError, ExtractOptions, ExtractReport, WriteOptions};

/// Copy `src` into `dst` (created if missing): contents, owners, modes, mtimes, links, sparse files, xattrs.
/// The tar stream goes through a pipe with stored (uncompressed) gzip blocks, so no CPU goes to compression.
pub(crate) fn copy_tree(src: &Path, dst: &Path) -> Result<ExtractReport, ArchiveError> {
    let (reader, writer) =
        std::io::pipe().map_err(|e| ArchiveError::io("create a pipe", src, e))?;
    std::thread::scope(|s| {
        let producer = s.spawn(move || -> Result<(), ArchiveError> {
            let mut gz = GzEncoder::new(
                BufWriter::with_capacity(1 << 20, writer),
                Compression::none(),
            );
            archive::write_tree(src, &mut gz, &WriteOptions::default())?;
            gz.finish()
                .map_err(|e| ArchiveError::io("finish the copy stream", src, e))?;
            Ok(())
        });
        let extracted = archive::extract(
            BufReader::with_capacity(1 << 20, reader),
            dst,
            &ExtractOptions::default(),
        );
        let produced = producer.join().unwrap_or_else(|_| {
            Err(ArchiveError::io(
                "copy",
                src,
                std::io::Error::other("the reading thread panicked"),
            ))
        });
        produced?;
        extracted
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn copies_content_owner_mode_and_links() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("d")).unwrap();
        std::fs::write(src.path().join("d/f"), b"hello").unwrap();
        std::fs::set_permissions(
            src.path().join("d/f"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        std::os::unix::fs::chown(src.path().join("d/f"), Some(1234), Some(4321)).unwrap();
        std::os::unix::fs::symlink("d/f", src.path().join("l")).unwrap();
        let target = dst.path().join("copy");
        copy_tree(src.path(), &target).unwrap();
        let md = std::fs::metadata(target.join("d/f")).unwrap();
        assert_eq!(
            (md.mode() & 0o7777, md.uid(), md.gid()),
            (0o640, 1234, 4321)
        );
        assert_eq!(std::fs::read(target.join("d/f")).unwrap(), b"hello");
        assert_eq!(
            std::fs::read_link(target.join("l")).unwrap(),
            Path::new("d/f")
        );
    }
}
