//! The results store: everything a job left, under `results/<job id>/`, in
//! the object store the fleet shares. Re-running a job id overwrites the
//! same keys, and `result.json` is written last, so a reader that finds it
//! finds everything it names.
use super::{Collected, stream_of};
use crate::error::{Cause, InfraError};
use crate::store::{self, exists, get_if_present, keys, put};
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload, path::Path as StorePath};
use shoal_schemas::{ResultMessage, Stream};
use std::sync::Arc;

/// Uploads each mount's kept files; returns each mount's prefix.
pub(crate) async fn put_outputs(
    store: &dyn ObjectStore,
    job_id: &str,
    collected: &[Collected],
) -> Result<Vec<String>, InfraError> {
    let mut prefixes = Vec::with_capacity(collected.len());
    for mount in collected {
        let prefix = keys::output_prefix(job_id, &mount.mount.name);
        for (entry, host) in &mount.files {
            // Object keys are `/`-separated parts; StorePath::parse refuses
            // `..` and empty parts, so no name leaves the job's prefix.
            let key = StorePath::parse(format!("{prefix}{}", entry.path)).map_err(|e| {
                InfraError::Store(Cause::new(
                    format!("output {} has no valid key", entry.path),
                    e,
                ))
            })?;
            // Streamed: an output may be as large as limits.max_output_bytes.
            store::put_file(store, &key, host).await?;
        }
        prefixes.push(prefix);
    }
    Ok(prefixes)
}

/// Stores a stream when it is too large to carry inline.
pub(crate) async fn put_stream(
    store: &dyn ObjectStore,
    job_id: &str,
    name: &str,
    bytes: &[u8],
    truncated: bool,
    inline_cap: u64,
) -> Result<Stream, InfraError> {
    if bytes.len() as u64 <= inline_cap {
        return Ok(stream_of(bytes, truncated, inline_cap, None));
    }
    let key = keys::stream(job_id, name);
    put(store, &key, bytes.to_vec()).await?;
    Ok(stream_of(
        bytes,
        truncated,
        inline_cap,
        Some(key.to_string()),
    ))
}

/// How `put_result` learns whether the job id had a result before this run
/// (a re-run, or a redelivery that ran again), whose leftovers it prunes.
pub(crate) enum EarlierResult {
    /// A lookup started when the job did, so the store's round trip
    /// overlaps staging and running instead of delaying the result. For S3
    /// stores that do not honour a create-only write: one that ignored it
    /// would silently skip the pruning.
    Lookup(tokio::task::JoinHandle<Result<bool, InfraError>>),
    /// The write itself tells: a create-only write fails when a result is
    /// there. For the local-folder store, which implements it with a hard
    /// link, and S3 stores that proved at the worker's start that they
    /// honour it (`Pipeline::check_store`); it saves a lookup (a request,
    /// or a thread hop) per job.
    OnWrite,
}

impl EarlierResult {
    /// Starts finding out for `job_id`: with a lookup, or (`create_only`)
    /// when the result is written.
    pub(crate) fn start(
        store: Arc<dyn ObjectStore>,
        job_id: &str,
        create_only: bool,
    ) -> EarlierResult {
        if create_only {
            return EarlierResult::OnWrite;
        }
        let key = keys::result(job_id);
        EarlierResult::Lookup(tokio::spawn(
            async move { exists(store.as_ref(), &key).await },
        ))
    }
}

/// Writes `results/<id>/result.json` unless the id has a result there
/// already: for the results a worker gives without running the job (a
/// message refused as invalid, a job given up after its attempts), so the
/// store stays the record of every job, while a malformed duplicate of a
/// job that did run never overwrites that job's result. Looked up first
/// rather than written create-only, since S3-compatible servers do not all
/// honour a create-only write.
/// `index`: also write its ended entry in the job index (`cache.index_jobs`).
/// Returns whether it was written.
pub(crate) async fn put_result_if_absent(
    store: &dyn ObjectStore,
    result: &ResultMessage,
    index: bool,
) -> Result<bool, InfraError> {
    let key = keys::result(&result.job_id);
    if exists(store, &key).await? {
        tracing::debug!(job_id = %result.job_id, "a result is stored already; keeping it");
        return Ok(false);
    }
    let json = serde_json::to_vec_pretty(result)
        .map_err(|e| InfraError::Store(Cause::new("encoding result", e)))?;
    put(store, &key, json).await?;
    if index {
        store::index::put_ended(store, result).await?;
    }
    Ok(true)
}

/// Writes `results/<id>/result.json`. When the id had a result before (a
/// re-run, or a redelivery that ran again), objects of the earlier run that
/// this result does not name are deleted afterwards, so the prefix ends up
/// holding exactly what the new result describes.
pub(crate) async fn put_result(
    store: &dyn ObjectStore,
    result: &ResultMessage,
    earlier: EarlierResult,
) -> Result<(), InfraError> {
    let json = serde_json::to_vec_pretty(result)
        .map_err(|e| InfraError::Store(Cause::new("encoding result", e)))?;
    let key = keys::result(&result.job_id);
    let rerun = match earlier {
        EarlierResult::Lookup(lookup) => lookup
            .await
            .map_err(|e| InfraError::Store(Cause::new("looking for an earlier result", e)))??,
        EarlierResult::OnWrite => {
            let payload = PutPayload::from(json.clone());
            match store.put_opts(&key, payload, PutMode::Create.into()).await {
                Ok(_) => return Ok(()),
                Err(object_store::Error::AlreadyExists { .. }) => true,
                // The local store makes a create-only write with a hard
                // link, which some file systems (SMB, some FUSE ones) lack:
                // look instead, and write as any store would.
                Err(e) => {
                    tracing::debug!(error = %e, "create-only write failed; looking for an earlier result instead");
                    exists(store, &key).await?
                }
            }
        }
    };
    put(store, &key, json).await?;
    if rerun {
        prune(store, result).await?;
    }
    Ok(())
}

/// Deletes what is under `results/<id>/` but not named by `result`.
async fn prune(store: &dyn ObjectStore, result: &ResultMessage) -> Result<(), InfraError> {
    use futures::TryStreamExt as _;
    let mut keep: std::collections::HashSet<String> = std::collections::HashSet::new();
    keep.insert(keys::result(&result.job_id).to_string());
    for stream in [&result.stdout, &result.stderr].into_iter().flatten() {
        if let Some(location) = &stream.location {
            keep.insert(location.clone());
        }
    }
    for output in &result.outputs {
        let prefix = output
            .location
            .clone()
            .unwrap_or_else(|| keys::output_prefix(&result.job_id, &output.name));
        for file in &output.files {
            if let Ok(key) = StorePath::parse(format!("{prefix}{}", file.path)) {
                keep.insert(key.to_string());
            }
        }
    }
    let prefix = keys::results(&result.job_id);
    let listed: Vec<_> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| InfraError::Store(Cause::new(format!("listing {prefix}"), e)))?;
    for meta in listed {
        if !keep.contains(meta.location.as_ref()) {
            match store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    return Err(InfraError::Store(Cause::new(
                        format!("deleting stale {}", meta.location),
                        e,
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Reads a stored result, if there is one.
pub async fn get_result(
    store: &dyn ObjectStore,
    job_id: &str,
) -> Result<Option<ResultMessage>, InfraError> {
    let key = keys::result(job_id);
    let Some(bytes) = get_if_present(store, &key).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| InfraError::Store(Cause::new(format!("{key} is not a result"), e)))
}
