//! Directories travel as tar archives: `submit` packs a local folder with
//! [`pack_dir`] (deterministically, so the same folder has the same hash) and
//! the stager unpacks it with [`unpack`], which refuses anything that could
//! land outside the destination and skips links and special files.
use std::io::{self, Read};
use std::path::{Component, Path};

/// Why an archive could not be unpacked.
#[derive(Debug)]
pub(super) enum UnpackError {
    /// The archive is malformed or names a path outside the destination.
    Job(String),
    /// It unpacks to more than the allowed bytes.
    TooLarge(String),
    /// Writing to the scratch folder failed.
    Disk(String),
}

/// Unpacks a tar archive (read as a stream) into `dest`: regular files and
/// folders only, at most `max_bytes` of file content and `max_files`
/// entries. Returns the bytes and entries written.
pub(super) fn unpack(
    archive: impl Read,
    dest: &Path,
    max_bytes: u64,
    max_files: u64,
) -> Result<(u64, u64), UnpackError> {
    std::fs::create_dir_all(dest)
        .map_err(|e| UnpackError::Disk(format!("creating {}: {e}", dest.display())))?;
    let mut tar = tar::Archive::new(archive);
    let mut total: u64 = 0;
    let mut files: u64 = 0;
    let entries = tar
        .entries()
        .map_err(|e| UnpackError::Job(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| UnpackError::Job(format!("corrupt tar archive: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| UnpackError::Job(format!("bad path in archive: {e}")))?
            .into_owned();
        if path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(UnpackError::Job(format!(
                "archive entry {} escapes its folder",
                path.display()
            )));
        }
        let target = dest.join(&path);
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::Directory | tar::EntryType::Regular | tar::EntryType::Continuous
        ) {
            files += 1;
            if files > max_files {
                return Err(UnpackError::TooLarge(format!(
                    "unpacks to more than {max_files} files and folders"
                )));
            }
        }
        match kind {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&target)
                    .map_err(|e| UnpackError::Disk(format!("{}: {e}", path.display())))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                total = total.saturating_add(entry.size());
                if total > max_bytes {
                    return Err(UnpackError::TooLarge(format!(
                        "unpacks to more than {max_bytes} bytes"
                    )));
                }
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| UnpackError::Disk(format!("{}: {e}", path.display())))?;
                }
                let mut file = std::fs::File::create(&target)
                    .map_err(|e| UnpackError::Disk(format!("{}: {e}", path.display())))?;
                io::copy(&mut (&mut entry).take(max_bytes), &mut file)
                    .map_err(|e| UnpackError::Disk(format!("{}: {e}", path.display())))?;
            }
            // Links and special files are skipped: an input is data, and a
            // link is a way to point somewhere the job was not given.
            _ => continue,
        }
    }
    Ok((total, files))
}

/// Packs a local folder as a deterministic tar archive: entries sorted by
/// path, no owners, times or modes beyond file/dir, symlinks left out.
pub fn pack_dir(dir: &Path) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut entries: Vec<_> = walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1)
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(io::Error::other)?;
    entries.sort_by(|a, b| a.path().cmp(b.path()));
    for entry in entries {
        let rel = entry.path().strip_prefix(dir).map_err(io::Error::other)?;
        let ft = entry.file_type();
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        if ft.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder.append_data(&mut header, rel, io::empty())?;
        } else if ft.is_file() {
            let data = std::fs::read(entry.path())?;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            builder.append_data(&mut header, rel, data.as_slice())?;
        }
    }
    builder.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_then_unpack_round_trips_and_is_deterministic() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("a/b")).unwrap();
        std::fs::write(src.path().join("a/b/c.txt"), "hello").unwrap();
        std::fs::write(src.path().join("top.txt"), "top").unwrap();
        let one = pack_dir(src.path()).unwrap();
        let two = pack_dir(src.path()).unwrap();
        assert_eq!(one, two);
        let dest = tempfile::tempdir().unwrap();
        unpack(&one[..], dest.path(), 1 << 20, 100).unwrap();
        assert_eq!(
            std::fs::read_to_string(dest.path().join("a/b/c.txt")).unwrap(),
            "hello"
        );
        assert_eq!(
            std::fs::read_to_string(dest.path().join("top.txt")).unwrap(),
            "top"
        );
    }

    #[test]
    fn refuses_escaping_entries() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_entry_type(tar::EntryType::Regular);
        // `append_data` refuses `..`, so write the name into the header directly.
        header.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
        header.set_cksum();
        builder.append(&header, &b"x"[..]).unwrap();
        let archive = builder.into_inner().unwrap();
        let dest = tempfile::tempdir().unwrap();
        assert!(matches!(
            unpack(&archive[..], &dest.path().join("in"), 10, 100),
            Err(UnpackError::Job(_))
        ));
        assert!(!dest.path().join("escape").exists());
    }

    #[test]
    fn caps_unpacked_size() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("big"), vec![0u8; 1000]).unwrap();
        let archive = pack_dir(src.path()).unwrap();
        let dest = tempfile::tempdir().unwrap();
        assert!(matches!(
            unpack(&archive[..], dest.path(), 999, 100),
            Err(UnpackError::TooLarge(_))
        ));
    }

    #[test]
    fn caps_file_count_and_reports_what_it_wrote() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("d")).unwrap();
        for name in ["d/1", "d/2", "3"] {
            std::fs::write(src.path().join(name), "xy").unwrap();
        }
        let archive = pack_dir(src.path()).unwrap();
        let dest = tempfile::tempdir().unwrap();
        // Three files and one folder.
        assert_eq!(
            unpack(&archive[..], &dest.path().join("ok"), 100, 4).unwrap(),
            (6, 4)
        );
        assert!(matches!(
            unpack(&archive[..], &dest.path().join("over"), 100, 3),
            Err(UnpackError::TooLarge(_))
        ));
    }
}
