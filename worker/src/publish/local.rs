//! The download folder of `submit run --local` (and `submit get --download`):
//!
//! ```text
//! <dir>/stdout  <dir>/stderr  <dir>/exitCode  <dir>/result.json  <dir>/<mount>/…
//! ```
//!
//! `exitCode` holds the guest's exit status as decimal text, and is absent
//! when the guest did not exit (a trap, a limit). `result.json` is written
//! last, so a folder with one is complete.
use super::Collected;
use crate::error::{Cause, InfraError};
use shoal_schemas::ResultMessage;
use std::path::{Path, PathBuf};

/// Prepares `dir` for a job's results: creates it, or clears a previous
/// result of the same job. A non-empty folder that does not hold a result
/// is refused rather than overwritten.
pub fn prepare(dir: &Path) -> Result<(), InfraError> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir)
            .map_err(|e| InfraError::Disk(Cause::new(format!("reading {}", dir.display()), e)))?;
        let empty = entries.next().is_none();
        if !empty {
            if !dir.join("result.json").exists() {
                return Err(InfraError::Disk(
                    format!(
                        "{} is not empty and holds no earlier result; choose another --download folder",
                        dir.display()
                    )
                    .into(),
                ));
            }
            std::fs::remove_dir_all(dir).map_err(|e| {
                InfraError::Disk(Cause::new(format!("clearing {}", dir.display()), e))
            })?;
        }
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| InfraError::Disk(Cause::new(format!("creating {}", dir.display()), e)))
}

/// Copies the kept output files into `<dir>/<mount name>/` and returns each
/// mount's folder.
pub(crate) fn copy_outputs(
    dir: &Path,
    collected: &[Collected],
) -> Result<Vec<PathBuf>, InfraError> {
    let mut folders = Vec::with_capacity(collected.len());
    for mount in collected {
        let folder = dir.join(&mount.mount.name);
        std::fs::create_dir_all(&folder).map_err(|e| {
            InfraError::Disk(Cause::new(format!("creating {}", folder.display()), e))
        })?;
        for (entry, host) in &mount.files {
            let target = folder.join(&entry.path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    InfraError::Disk(Cause::new(format!("creating {}", parent.display()), e))
                })?;
            }
            std::fs::copy(host, &target)
                .map_err(|e| InfraError::Disk(Cause::new(format!("copying {}", entry.path), e)))?;
        }
        folders.push(folder);
    }
    Ok(folders)
}

/// Writes one whole file of the folder (a stream).
pub(crate) fn write_file(path: &Path, data: &[u8]) -> Result<(), InfraError> {
    std::fs::write(path, data)
        .map_err(|e| InfraError::Disk(Cause::new(format!("writing {}", path.display()), e)))
}

/// An absolute path as results name it.
pub(crate) fn path_string(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// Writes exitCode (when the guest exited), then result.json, last.
pub fn write_result(dir: &Path, result: &ResultMessage) -> Result<(), InfraError> {
    if let Some(code) = result.exit_code {
        write_file(&dir.join("exitCode"), code.to_string().as_bytes())?;
    }
    let json = serde_json::to_vec_pretty(result)
        .map_err(|e| InfraError::Disk(Cause::new("encoding result", e)))?;
    let tmp = dir.join(".result.json.tmp");
    std::fs::write(&tmp, json)
        .map_err(|e| InfraError::Disk(Cause::new("writing result.json", e)))?;
    std::fs::rename(&tmp, dir.join("result.json"))
        .map_err(|e| InfraError::Disk(Cause::new("writing result.json", e)))
}
