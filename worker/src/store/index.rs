//! The job index and cancel requests: what `submit list`, `describe` and
//! `cancel` read without a server of their own.
//!
//! A job has an entry under `jobs/by-time/` keyed by when it was submitted,
//! inverted so that S3's ascending listing gives the newest first, in a
//! folder per day and minute so that the newest jobs are found without
//! listing the older ones. A client writes the entry without a status when it submits
//! (and `jobs/by-id/<id>.json`, to find it by id); the worker that ends the
//! job writes a second one beside it with the status in its name, so a
//! listing filtered by status reads only names. Both are written after the
//! fact they record; a job whose client wrote nothing (another language's
//! client without store access) appears once it ends.
use super::{get_if_present, keys, put};
use crate::error::{Cause, InfraError};
use futures::TryStreamExt as _;
use object_store::ObjectStore;
use shoal_schemas::{IndexEntry, ResultMessage, Status};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

/// Microseconds since the epoch.
pub fn micros(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The time of `micros` microseconds since the epoch.
pub fn at_micros(micros: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_micros(micros)
}

/// RFC 3339 in UTC with microseconds, `2026-12-01T22:30:47.123456Z`: every
/// time Shoal writes (results, index entries, cancel records, inspect).
pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_micros(at).to_string()
}

fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(text).ok()
}

fn encode(entry: &impl serde::Serialize) -> Result<Vec<u8>, InfraError> {
    serde_json::to_vec(entry)
        .map_err(|e| InfraError::Store(Cause::new("encoding an index entry", e)))
}

/// Records a job as submitted at `submitted_us` (the publish-time header's
/// value, so the worker's entry lands beside it): its by-time and by-id
/// entries, written together.
pub async fn put_submitted(
    store: &dyn ObjectStore,
    job_id: &str,
    submitted_us: u64,
) -> Result<(), InfraError> {
    let entry = IndexEntry {
        schema: shoal_schemas::INDEX_SCHEMA.to_owned(),
        job_id: job_id.to_owned(),
        status: None,
        worker: None,
        attempt: None,
        submitted_at: rfc3339(at_micros(submitted_us)),
        started_at: None,
        finished_at: None,
        exit_code: None,
        error_kind: None,
    };
    let body = encode(&entry)?;
    let (time_key, id_key) = (
        keys::job_entry(submitted_us, job_id, None),
        keys::job_by_id(job_id),
    );
    let by_time = put(store, &time_key, body.clone());
    let by_id = put(store, &id_key, body);
    let (a, b) = futures::join!(by_time, by_id);
    a.and(b)
}

/// Records how a job ended, beside its submitted entry. A result without a
/// submit time (a message that said nothing of it) is indexed by when its
/// attempt started.
pub async fn put_ended(store: &dyn ObjectStore, result: &ResultMessage) -> Result<(), InfraError> {
    let Some(submitted) = [&result.submitted_at, &result.started_at]
        .into_iter()
        .flatten()
        .find_map(|t| parse_rfc3339(t))
    else {
        return Ok(());
    };
    let entry = IndexEntry {
        schema: shoal_schemas::INDEX_SCHEMA.to_owned(),
        job_id: result.job_id.clone(),
        status: Some(result.status),
        worker: Some(result.worker.clone()),
        attempt: Some(result.attempt),
        submitted_at: rfc3339(submitted),
        started_at: result.started_at.clone(),
        finished_at: result.finished_at.clone(),
        exit_code: result.exit_code,
        error_kind: result.error.as_ref().map(|e| e.kind.as_str().to_owned()),
    };
    let key = keys::job_entry(
        micros(submitted),
        &result.job_id,
        Some(result.status.as_str()),
    );
    put(store, &key, encode(&entry)?).await
}

/// A job's submitted entry, found by id.
pub async fn submitted(
    store: &dyn ObjectStore,
    job_id: &str,
) -> Result<Option<IndexEntry>, InfraError> {
    read_entry(store, &keys::job_by_id(job_id)).await
}

/// An index entry, if there is one at `key`.
async fn read_entry(
    store: &dyn ObjectStore,
    key: &object_store::path::Path,
) -> Result<Option<IndexEntry>, InfraError> {
    match get_if_present(store, key).await? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| InfraError::Store(Cause::new(format!("{key} is not an index entry"), e))),
    }
}

/// One job as the by-time index names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The job's id.
    pub job_id: String,
    /// When it was submitted, µs since the epoch.
    pub submitted_us: u64,
    /// How it ended, when it did, and the key of that entry.
    pub ended: Option<(Status, object_store::path::Path)>,
}

/// Which jobs [`newest`] returns.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Only jobs submitted at or after this (µs since the epoch).
    pub since_us: Option<u64>,
    /// Only jobs that ended with one of these, or (`unfinished`) have not.
    pub statuses: Vec<Status>,
    /// Also jobs that have not ended (when `statuses` is not empty).
    pub unfinished: bool,
    /// At most this many.
    pub limit: usize,
}

impl Query {
    fn wants(&self, listed: &Listed) -> bool {
        if self.statuses.is_empty() && !self.unfinished {
            return true;
        }
        match &listed.ended {
            Some((status, _)) => self.statuses.contains(status),
            None => self.unfinished,
        }
    }
}

/// The newest jobs in the index that `query` wants, newest first. Lists a
/// minute's folder at a time, newest first (the days, then each day's
/// minutes, both sorted), and stops at the folder that fills the limit or
/// the first older than `since_us`: the cost grows with the jobs of the
/// minutes it reads, not with the whole index.
pub async fn newest(store: &dyn ObjectStore, query: &Query) -> Result<Vec<Listed>, InfraError> {
    let mut found = Vec::new();
    for day in folders(store, &keys::jobs_by_time()).await? {
        for minute in folders(store, &day).await? {
            let (more, older) = read_minute(store, &minute, query, &mut found).await?;
            if !more || older {
                return Ok(found);
            }
        }
    }
    Ok(found)
}

/// The folders under `parent`, sorted (newest first, the names being inverted).
async fn folders(
    store: &dyn ObjectStore,
    parent: &object_store::path::Path,
) -> Result<Vec<object_store::path::Path>, InfraError> {
    let listing = store
        .list_with_delimiter(Some(parent))
        .await
        .map_err(|e| InfraError::Store(Cause::new(format!("listing {parent}"), e)))?;
    let mut folders = listing.common_prefixes;
    folders.sort();
    Ok(folders)
}

/// Adds the jobs of one minute's folder that `query` wants to `found`, in
/// order. Returns whether more are wanted, and whether the folder reached
/// back past `since_us` (nothing older is).
async fn read_minute(
    store: &dyn ObjectStore,
    minute: &object_store::path::Path,
    query: &Query,
    found: &mut Vec<Listed>,
) -> Result<(bool, bool), InfraError> {
    let mut names: Vec<_> = store
        .list(Some(minute))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await
        .map_err(|e| InfraError::Store(Cause::new(format!("listing {minute}"), e)))?;
    names.sort();
    // A job's two entries, grouped; kept in the listing's order.
    let mut order: Vec<(u64, String)> = Vec::new();
    let mut by_job: HashMap<(u64, String), Listed> = HashMap::new();
    let mut older = false;
    for name in names {
        let Some((us, id, status)) = keys::parse_job_entry(name.as_ref()) else {
            continue;
        };
        if query.since_us.is_some_and(|since| us < since) {
            older = true;
            continue;
        }
        let slot = by_job.entry((us, id.clone())).or_insert_with(|| {
            order.push((us, id.clone()));
            Listed {
                job_id: id.clone(),
                submitted_us: us,
                ended: None,
            }
        });
        if let Some(status) = status.as_deref().and_then(status_named) {
            slot.ended = Some((status, name.clone()));
        }
    }
    for key in order {
        if let Some(listed) = by_job.remove(&key)
            && query.wants(&listed)
        {
            found.push(listed);
            if found.len() >= query.limit {
                return Ok((false, older));
            }
        }
    }
    Ok((true, older))
}

/// An ended entry's contents.
pub async fn ended_entry(
    store: &dyn ObjectStore,
    key: &object_store::path::Path,
) -> Result<Option<IndexEntry>, InfraError> {
    read_entry(store, key).await
}

fn status_named(name: &str) -> Option<Status> {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
}

/// A cancel request as stored (`cancel/<id>.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CancelRequest {
    /// The job's id.
    pub job_id: String,
    /// When it was asked (RFC 3339, UTC).
    pub requested_at: String,
}

/// Records a request to cancel `job_id`; `false` when one was there.
pub async fn request_cancel(store: &dyn ObjectStore, job_id: &str) -> Result<bool, InfraError> {
    let key = keys::cancel(job_id);
    if super::exists(store, &key).await? {
        return Ok(false);
    }
    let request = CancelRequest {
        job_id: job_id.to_owned(),
        requested_at: rfc3339(SystemTime::now()),
    };
    put(store, &key, encode(&request)?).await?;
    Ok(true)
}

/// Whether `job_id` was asked to be cancelled.
pub async fn cancel_requested(
    store: &dyn ObjectStore,
    job_id: &str,
) -> Result<Option<CancelRequest>, InfraError> {
    let key = keys::cancel(job_id);
    match get_if_present(store, &key).await? {
        None => Ok(None),
        Some(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
    }
}

/// The ids of every job asked to be cancelled: what a worker loads when it
/// (re)connects, after binding its control queue so that no request falls
/// between the two, and every few seconds while connected.
pub async fn cancel_requests(store: &dyn ObjectStore) -> Result<HashSet<String>, InfraError> {
    let root = keys::cancels();
    store
        .list(Some(&root))
        .try_filter_map(|meta| async move {
            // Only `cancel/<id>.json` itself: a key nested deeper, or a name
            // that is no job id, cancels nothing.
            let key = meta.location.as_ref();
            Ok(key
                .strip_prefix("cancel/")
                .and_then(|name| name.strip_suffix(".json"))
                .filter(|id| keys::valid_job_id(id))
                .map(str::to_owned))
        })
        .try_collect()
        .await
        .map_err(|e| InfraError::Store(Cause::new(format!("listing {root}"), e)))
}
