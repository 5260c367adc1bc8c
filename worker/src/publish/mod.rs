//! Publish (step 4 of a job): turn what the guest left behind into a result.
//!
//! [`collect`] walks each output mount without following links, hashes the
//! regular files and applies the job's byte and file limits in a fixed
//! (sorted) order, so the same outputs always give the same manifest. The
//! destinations live beside it: [`local`] writes the download folder of
//! `submit run --local`.
//!
//! It does not decide the job's status beyond `output_limit`; the pipeline does.
pub mod local;
pub mod store;

use crate::config::LimitValues;
use crate::error::InfraError;
use crate::job::JobOutput;
use sha2::{Digest, Sha256};
use shoal_schemas::{FileEntry, SkipReason, Skipped};
use std::path::PathBuf;

/// One output mount's files, ready to store.
#[derive(Debug, Clone)]
pub struct Collected {
    /// The mount.
    pub mount: JobOutput,
    /// Kept files, sorted by path, with their host paths.
    pub files: Vec<(FileEntry, PathBuf)>,
    /// What was left out.
    pub skipped: Vec<Skipped>,
    /// Total bytes kept.
    pub bytes: u64,
    /// Some regular file was left out for a limit.
    pub over_limit: bool,
}

/// Walks the output mounts (blocking; call from a blocking thread).
pub fn collect(
    outputs: &[(JobOutput, PathBuf)],
    limits: &LimitValues,
) -> Result<Vec<Collected>, InfraError> {
    let mut files_left = limits.max_output_files;
    let mut bytes_left = limits.max_output_bytes;
    let mut collected = Vec::with_capacity(outputs.len());
    for (mount, host) in outputs {
        let mut out = Collected {
            mount: mount.clone(),
            files: Vec::new(),
            skipped: Vec::new(),
            bytes: 0,
            over_limit: false,
        };
        for entry in walkdir::WalkDir::new(host)
            .follow_links(false)
            .sort_by_file_name()
            .min_depth(1)
        {
            let entry = entry
                .map_err(|e| InfraError::Disk(format!("walking output {}: {e}", mount.name)))?;
            let rel = entry.path().strip_prefix(host).unwrap_or(entry.path());
            let ft = entry.file_type();
            if ft.is_dir() {
                continue;
            }
            let Some(rel_str) = rel.to_str() else {
                out.skipped.push(Skipped {
                    path: rel.to_string_lossy().into_owned(),
                    reason: SkipReason::UnreadableName,
                });
                continue;
            };
            // Object keys refuse control characters: such a name is
            // skipped like an unreadable one, not a store failure to retry.
            if rel_str.chars().any(char::is_control) {
                out.skipped.push(Skipped {
                    path: rel_str.escape_debug().to_string(),
                    reason: SkipReason::UnreadableName,
                });
                continue;
            }
            let rel_str = rel_str.to_owned();
            if ft.is_symlink() {
                out.skipped.push(Skipped {
                    path: rel_str,
                    reason: SkipReason::Symlink,
                });
                continue;
            }
            if !ft.is_file() {
                out.skipped.push(Skipped {
                    path: rel_str,
                    reason: SkipReason::SpecialFile,
                });
                continue;
            }
            let size = entry
                .metadata()
                .map_err(|e| InfraError::Disk(format!("{rel_str}: {e}")))?
                .len();
            if files_left == 0 || size > bytes_left {
                out.skipped.push(Skipped {
                    path: rel_str,
                    reason: SkipReason::OutputLimit,
                });
                out.over_limit = true;
                continue;
            }
            let sha256 = hash_file(entry.path())
                .map_err(|e| InfraError::Disk(format!("hashing {rel_str}: {e}")))?;
            files_left -= 1;
            bytes_left -= size;
            out.bytes += size;
            out.files.push((
                FileEntry {
                    path: rel_str,
                    size,
                    sha256,
                },
                entry.path().to_path_buf(),
            ));
        }
        collected.push(out);
    }
    Ok(collected)
}

fn hash_file(path: &std::path::Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}
