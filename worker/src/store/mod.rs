//! The store the whole fleet shares (an S3 bucket, or a local folder in
//! the embedded default): the content cache and the results in one
//! `object_store`. This is the bottom layer of the worker: staging,
//! compiled artifacts, publishing and the submitter use it; it uses none of
//! them.
//!
//! - [`keys`]: every object key, defined once.
//! - [`open`]: the store the configuration names.
//! - whole objects ([`get_if_present`], [`put`], [`exists`]) and streamed
//!   ones ([`put_file`], [`get_to_file`], [`write_object`]) without holding
//!   them in memory;
//! - content-addressed writes ([`put_content`], [`cache_file`]: upload to a
//!   temporary key, then commit under the hash) so readers never see a torn
//!   object;
//! - [`Uploads`]: cache copies a job's guest run overlaps;
//! - [`index`]: the job index (`submit list`) and cancel requests.
mod files;
pub mod index;
pub mod keys;
mod objects;
mod open;
mod uploads;

pub(crate) use files::PlainFile;
pub use keys::sha256_hex;
pub(crate) use objects::{cache_file, copy_object, get_to_file, write_object};
pub use objects::{put_content, put_file, put_file_with};
pub use open::{OpenError, open};
pub use uploads::Uploads;

use crate::error::{Cause, InfraError};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, path::Path as StorePath};

/// Writes one whole object; a failure is the store's (ours to retry).
pub async fn put(
    store: &dyn ObjectStore,
    key: &StorePath,
    bytes: Vec<u8>,
) -> Result<(), InfraError> {
    store
        .put(key, PutPayload::from(bytes))
        .await
        .map(|_| ())
        .map_err(|e| InfraError::Store(Cause::new(format!("writing {key}"), e)))
}

/// Whether the store refuses a create-only write (`PutMode::Create`; S3's
/// `If-None-Match: *`) to a key that exists: tried on a key of its own,
/// written twice. Not every S3-compatible server honours the condition, and
/// one that ignored it would overwrite silently, so a store is trusted with
/// it only once it refused the second write here. The local folder does
/// (a hard link); SeaweedFS 4.48 does (412).
pub async fn honours_create_only(store: &dyn ObjectStore) -> bool {
    let key = keys::create_only_probe();
    let create = || {
        store.put_opts(
            &key,
            PutPayload::from_static(b"probe"),
            object_store::PutMode::Create.into(),
        )
    };
    let honoured = match create().await {
        Ok(_) => matches!(
            create().await,
            Err(object_store::Error::AlreadyExists { .. })
        ),
        Err(e) => {
            tracing::debug!(error = %e, "a create-only write was refused outright");
            false
        }
    };
    let _ = store.delete(&key).await;
    honoured
}

/// Whether the store holds `key`.
pub async fn exists(store: &dyn ObjectStore, key: &StorePath) -> Result<bool, InfraError> {
    match store.head(key).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(InfraError::Store(Cause::new(format!("checking {key}"), e))),
    }
}

/// Reads one whole object; `None` when there is none, an error when the
/// store itself failed.
pub(crate) async fn get_if_present(
    store: &dyn ObjectStore,
    key: &StorePath,
) -> Result<Option<bytes::Bytes>, InfraError> {
    match store.get(key).await {
        Ok(got) => got
            .bytes()
            .await
            .map(Some)
            .map_err(|e| InfraError::Store(Cause::new(format!("reading {key}"), e))),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(InfraError::Store(Cause::new(format!("reading {key}"), e))),
    }
}
