//! Objects streamed between the store and local files, and content-addressed
//! writes.
use super::files::{HashingFile, PlainFile};
use super::keys;
use crate::error::{Cause, InfraError};
use bytes::Bytes;
use futures::TryStreamExt as _;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, path::Path as StorePath};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Puts `bytes` into the cache under their hash, unless already there, and
/// returns the hash. This is what `submit` does with a local module or input.
pub async fn put_content(store: &dyn ObjectStore, bytes: Bytes) -> Result<String, InfraError> {
    let hex = keys::sha256_hex(&bytes);
    let key = keys::sha256(&hex);
    match store.head(&key).await {
        Ok(meta) if meta.size == bytes.len() as u64 => return Ok(hex),
        Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(InfraError::Store(Cause::new(format!("checking {key}"), e))),
    }
    store
        .put(&key, PutPayload::from_bytes(bytes))
        .await
        .map_err(|e| InfraError::Store(Cause::new(format!("writing {key}"), e)))?;
    Ok(hex)
}

/// Streams a fetched object into the file `dest`, hashing as it goes;
/// returns its size and lowercase hex SHA-256.
pub(crate) async fn write_object(
    got: object_store::GetResult,
    name: &str,
    dest: &Path,
) -> Result<(u64, String), InfraError> {
    let mut stream = got.into_stream();
    let mut sink = HashingFile::create(dest).await?;
    while let Some(chunk) = stream
        .try_next()
        .await
        .map_err(|e| InfraError::Store(Cause::new(format!("reading {name}"), e)))?
    {
        sink.write(chunk).await?;
    }
    sink.finish().await
}

/// Streams the object at `key` into the file `dest`; `false` when there is no such object.
pub(crate) async fn get_to_file(
    store: &dyn ObjectStore,
    key: &StorePath,
    dest: &Path,
) -> Result<bool, InfraError> {
    match store.get(key).await {
        Ok(got) => write_object(got, key.as_ref(), dest).await.map(|_| true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(InfraError::Store(Cause::new(format!("reading {key}"), e))),
    }
}

/// Uploads the file `src` to `key` without holding it in memory: one put
/// when small, a multipart upload otherwise. Readers see the object only
/// once it is complete (S3 and the local store both commit atomically).
/// Returns the file's size and SHA-256, computed on the way.
pub async fn put_file(
    store: &dyn ObjectStore,
    key: &StorePath,
    src: &Path,
) -> Result<(u64, String), InfraError> {
    put_file_with(store, key, src, &|_| {}).await
}

/// [`put_file`], calling `progress` with each chunk's size as it is read.
pub async fn put_file_with(
    store: &dyn ObjectStore,
    key: &StorePath,
    src: &Path,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(u64, String), InfraError> {
    use tokio::io::AsyncReadExt as _;
    const PART: usize = 8 << 20;
    let disk =
        |e: std::io::Error| InfraError::Disk(Cause::new(format!("reading {}", src.display()), e));
    let store_err =
        |e: object_store::Error| InfraError::Store(Cause::new(format!("writing {key}"), e));
    let mut file = tokio::fs::File::open(src).await.map_err(disk)?;
    let size = file.metadata().await.map_err(disk)?.len();
    if size <= PART as u64 {
        let mut bytes = Vec::with_capacity(size as usize);
        file.read_to_end(&mut bytes).await.map_err(disk)?;
        let hex = keys::sha256_hex(&bytes);
        progress(bytes.len() as u64);
        store
            .put(key, PutPayload::from(bytes))
            .await
            .map_err(store_err)?;
        return Ok((size, hex));
    }
    let upload = store.put_multipart(key).await.map_err(store_err)?;
    let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PART);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).await.map_err(disk)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        writer.wait_for_capacity(2).await.map_err(store_err)?;
        writer.write(&buf[..n]);
        progress(n as u64);
    }
    writer.finish().await.map_err(store_err)?;
    Ok((size, hex::encode(hasher.finalize())))
}

/// Puts the file `src` into the cache under its hash, without reading it
/// twice: uploaded to a temporary key while hashing, then committed to
/// `cache/sha256/<hex>` (a rename; on S3 a server-side copy), unless that
/// is there already. Two workers caching the same content at once each
/// commit a complete copy of the same bytes, so readers never see a torn
/// object. Returns the size and hash.
pub(crate) async fn cache_file(
    store: &dyn ObjectStore,
    src: &Path,
) -> Result<(u64, String), InfraError> {
    let temp = keys::temp();
    let (size, hex) = put_file(store, &temp, src).await?;
    let key = keys::sha256(&hex);
    let committed = match store.head(&key).await {
        Ok(meta) if meta.size == size => store.delete(&temp).await,
        Ok(_) | Err(object_store::Error::NotFound { .. }) => store.rename(&temp, &key).await,
        Err(e) => Err(e),
    };
    if let Err(e) = committed {
        let _ = store.delete(&temp).await;
        return Err(InfraError::Store(Cause::new(
            format!("committing {key}"),
            e,
        )));
    }
    Ok((size, hex))
}

/// Streams a fetched object into the file `dest` as is (no hash: for
/// sources nobody addresses by content). Returns its size.
pub(crate) async fn copy_object(
    got: object_store::GetResult,
    name: &str,
    dest: &Path,
) -> Result<u64, InfraError> {
    let mut stream = got.into_stream();
    let mut sink = PlainFile::create(dest).await?;
    while let Some(chunk) = stream
        .try_next()
        .await
        .map_err(|e| InfraError::Store(Cause::new(format!("reading {name}"), e)))?
    {
        sink.write(&chunk).await?;
    }
    sink.finish().await
}
