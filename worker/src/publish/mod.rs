//! Publish (step 4 of a job): turn what the guest left behind into a result.
//!
//! [`collect`] walks each output mount without following links, hashes the
//! regular files and applies the job's byte and file limits in a fixed
//! (sorted) order, so the same outputs always give the same manifest.
//! [`result`] turns what the guest did into the wire result. A
//! [`Destination`] takes the outputs, streams and result: [`local`] writes
//! the download folder of `submit run --local`, [`store`] the fleet's
//! `results/<id>/`.
pub mod local;
mod result;
pub(crate) mod store;

pub(crate) use result::{result_of, stamp, stream_of};
pub use store::get_result;

use crate::config::LimitValues;
use crate::error::{Cause, InfraError};
use crate::job::JobOutput;
use object_store::ObjectStore;
use sha2::{Digest, Sha256};
use shoal_schemas::{FileEntry, SkipReason, Skipped};
use shoal_schemas::{OutputResult, ResultMessage, Stream};
use std::path::PathBuf;
use std::sync::Arc;

/// One output mount's files, ready to store.
#[derive(Debug, Clone)]
pub(crate) struct Collected {
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

/// Where a job's outputs, streams and result go. Every job takes the same
/// steps whatever its destination: [`outputs`](Destination::outputs), then
/// each [`stream`](Destination::stream), then the
/// [`result`](Destination::result), last, so a reader that finds a result
/// finds everything it names.
pub(crate) enum Destination {
    /// The download folder of a local run.
    Folder(PathBuf),
    /// The fleet's store, under `results/<id>/`.
    Store {
        /// The store.
        store: Arc<dyn ObjectStore>,
        /// Whether the job id had a result before, found out meanwhile.
        earlier: store::EarlierResult,
        /// Whether to write the job's ended entry in the job index.
        index: bool,
    },
}

impl Destination {
    /// The store as the destination of job `job_id`; starts finding out
    /// whether the id has a result already, so that overlaps the job.
    /// `create_only`: the store honours create-only writes (the local
    /// folder), which answer that question on the result's write.
    /// `index`: also write the job's ended entry in the job index
    /// (`cache.index_jobs`).
    pub(crate) fn store(
        store: Arc<dyn ObjectStore>,
        job_id: &str,
        create_only: bool,
        index: bool,
    ) -> Destination {
        let earlier = store::EarlierResult::start(store.clone(), job_id, create_only);
        Destination::Store {
            store,
            earlier,
            index,
        }
    }

    /// Stores each mount's kept files; returns each mount's location (a
    /// folder, or a key prefix).
    pub(crate) async fn outputs(
        &self,
        job_id: &str,
        collected: Vec<Collected>,
    ) -> Result<(Vec<Collected>, Vec<String>), InfraError> {
        match self {
            Destination::Folder(dir) => {
                let dir = dir.clone();
                let (collected, folders) =
                    tokio::task::spawn_blocking(move || -> Result<_, InfraError> {
                        local::prepare(&dir)?;
                        let folders = local::copy_outputs(&dir, &collected)?;
                        Ok((collected, folders))
                    })
                    .await
                    .map_err(|e| InfraError::Disk(Cause::new("publishing thread failed", e)))??;
                Ok((
                    collected,
                    folders.iter().map(|f| local::path_string(f)).collect(),
                ))
            }
            Destination::Store { store, .. } => {
                let prefixes = store::put_outputs(store.as_ref(), job_id, &collected).await?;
                Ok((collected, prefixes))
            }
        }
    }

    /// Stores the stream `name` (`stdout` or `stderr`) where it does not
    /// fit inline (in a folder: always, as a file of its own).
    pub(crate) async fn stream(
        &self,
        job_id: &str,
        name: &str,
        bytes: &[u8],
        truncated: bool,
        inline_cap: u64,
    ) -> Result<Stream, InfraError> {
        match self {
            Destination::Folder(dir) => {
                let path = dir.join(name);
                local::write_file(&path, bytes)?;
                Ok(stream_of(
                    bytes,
                    truncated,
                    inline_cap,
                    Some(local::path_string(&path)),
                ))
            }
            Destination::Store { store, .. } => {
                store::put_stream(store.as_ref(), job_id, name, bytes, truncated, inline_cap).await
            }
        }
    }

    /// Writes the result, last.
    pub(crate) async fn result(self, result: &ResultMessage) -> Result<(), InfraError> {
        match self {
            Destination::Folder(dir) => local::write_result(&dir, result),
            // The index entry beside the result, at the same time: it only
            // names the result, and a retry writes both again.
            Destination::Store {
                store,
                earlier,
                index,
            } => {
                let indexed = async {
                    match index {
                        true => crate::store::index::put_ended(store.as_ref(), result).await,
                        false => Ok(()),
                    }
                };
                let (stored, indexed) =
                    futures::join!(store::put_result(store.as_ref(), result, earlier), indexed);
                stored.and(indexed)
            }
        }
    }

    /// The result of a job that ended before its guest ran (it could not
    /// be staged): no outputs, empty streams.
    pub(crate) async fn failure(self, result: &ResultMessage) -> Result<(), InfraError> {
        if let Destination::Folder(dir) = &self {
            local::prepare(dir)?;
            local::write_file(&dir.join("stdout"), b"")?;
            local::write_file(&dir.join("stderr"), b"")?;
        }
        self.result(result).await
    }
}

/// Each mount's result entry, with the location its files went to.
pub(crate) fn output_results(collected: Vec<Collected>, locations: &[String]) -> Vec<OutputResult> {
    collected
        .into_iter()
        .zip(locations)
        .map(|(c, location)| OutputResult {
            name: c.mount.name.clone(),
            path: c.mount.path.to_string(),
            location: Some(location.clone()),
            partial: !c.skipped.is_empty(),
            files: c.files.into_iter().map(|(entry, _)| entry).collect(),
            bytes: c.bytes,
            skipped: c.skipped,
        })
        .collect()
}

/// Walks the output mounts (blocking; call from a blocking thread).
pub(crate) fn collect(
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
            let entry = entry.map_err(|e| {
                InfraError::Disk(Cause::new(format!("walking output {}", mount.name), e))
            })?;
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
                .map_err(|e| InfraError::Disk(Cause::new(rel_str.to_string(), e)))?
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
                .map_err(|e| InfraError::Disk(Cause::new(format!("hashing {rel_str}"), e)))?;
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
