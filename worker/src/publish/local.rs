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
use crate::error::InfraError;
use shoal_schemas::ResultMessage;
use std::path::{Path, PathBuf};

/// Prepares `dir` for a job's results: creates it, or clears a previous
/// result of the same job. A non-empty folder that does not hold a result
/// is refused rather than overwritten.
pub fn prepare(dir: &Path) -> Result<(), InfraError> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir)
            .map_err(|e| InfraError::Disk(format!("reading {}: {e}", dir.display())))?;
        let empty = entries.next().is_none();
        if !empty {
            if !dir.join("result.json").exists() {
                return Err(InfraError::Disk(format!(
                    "{} is not empty and holds no earlier result; choose another --download folder",
                    dir.display()
                )));
            }
            std::fs::remove_dir_all(dir)
                .map_err(|e| InfraError::Disk(format!("clearing {}: {e}", dir.display())))?;
        }
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| InfraError::Disk(format!("creating {}: {e}", dir.display())))
}

/// Copies the kept output files into `<dir>/<mount name>/` and returns each
/// mount's folder.
pub fn copy_outputs(dir: &Path, collected: &[Collected]) -> Result<Vec<PathBuf>, InfraError> {
    let mut folders = Vec::with_capacity(collected.len());
    for mount in collected {
        let folder = dir.join(&mount.mount.name);
        std::fs::create_dir_all(&folder)
            .map_err(|e| InfraError::Disk(format!("creating {}: {e}", folder.display())))?;
        for (entry, host) in &mount.files {
            let target = folder.join(&entry.path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| InfraError::Disk(format!("creating {}: {e}", parent.display())))?;
            }
            std::fs::copy(host, &target)
                .map_err(|e| InfraError::Disk(format!("copying {}: {e}", entry.path)))?;
        }
        folders.push(folder);
    }
    Ok(folders)
}

/// Writes stdout, stderr and exitCode.
pub fn write_streams(
    dir: &Path,
    stdout: &[u8],
    stderr: &[u8],
    exit_code: Option<i32>,
) -> Result<(), InfraError> {
    let write = |name: &str, data: &[u8]| {
        std::fs::write(dir.join(name), data)
            .map_err(|e| InfraError::Disk(format!("writing {name}: {e}")))
    };
    write("stdout", stdout)?;
    write("stderr", stderr)?;
    if let Some(code) = exit_code {
        write("exitCode", code.to_string().as_bytes())?;
    }
    Ok(())
}

/// Writes result.json, last.
pub fn write_result(dir: &Path, result: &ResultMessage) -> Result<(), InfraError> {
    let json = serde_json::to_vec_pretty(result)
        .map_err(|e| InfraError::Disk(format!("encoding result: {e}")))?;
    let tmp = dir.join(".result.json.tmp");
    std::fs::write(&tmp, json)
        .map_err(|e| InfraError::Disk(format!("writing result.json: {e}")))?;
    std::fs::rename(&tmp, dir.join("result.json"))
        .map_err(|e| InfraError::Disk(format!("writing result.json: {e}")))
}
