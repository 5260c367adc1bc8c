//! The store the whole fleet shares, as staging uses it: opening it,
//! content-addressed keys, streaming files in and out without holding them
//! in memory, committing cache entries atomically, and the cache copies a
//! job's guest run overlaps ([`Uploads`]).
use crate::config::CacheSection;
use crate::error::InfraError;
use bytes::Bytes;
use futures::TryStreamExt as _;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, path::Path as StorePath};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Opens the store the configuration names: the content cache and the
/// results store in one. An S3 bucket when `cache.s3_bucket` is set (the
/// fleet's shared store), else the local folder `cache.dir` (the embedded
/// default).
pub fn open_store(cache: &CacheSection) -> Result<Arc<dyn ObjectStore>, String> {
    if !cache.s3_bucket.is_empty() {
        use object_store::aws::AmazonS3Builder;
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&cache.s3_bucket)
            .with_region(&cache.s3_region)
            .with_virtual_hosted_style_request(cache.s3_virtual_hosted)
            .with_retry(object_store::RetryConfig {
                retry_timeout: std::time::Duration::from_secs(cache.s3_retry_timeout_secs),
                ..object_store::RetryConfig::default()
            });
        if !cache.s3_endpoint.is_empty() {
            builder = builder
                .with_endpoint(&cache.s3_endpoint)
                .with_allow_http(cache.s3_endpoint.starts_with("http://"));
        }
        builder = if cache.s3_access_key_id.is_empty() {
            builder.with_skip_signature(true)
        } else {
            builder
                .with_access_key_id(&cache.s3_access_key_id)
                .with_secret_access_key(&cache.s3_secret_access_key)
        };
        let store = builder
            .build()
            .map_err(|e| format!("opening S3 bucket {}: {e}", cache.s3_bucket))?;
        return Ok(Arc::new(store));
    }
    std::fs::create_dir_all(&cache.dir)
        .map_err(|e| format!("creating cache folder {}: {e}", cache.dir.display()))?;
    let store = object_store::local::LocalFileSystem::new_with_prefix(&cache.dir)
        .map_err(|e| format!("opening cache folder {}: {e}", cache.dir.display()))?;
    Ok(Arc::new(store))
}

/// The cache key of content with this SHA-256.
pub fn sha256_key(hex: &str) -> StorePath {
    StorePath::from(format!("cache/sha256/{hex}"))
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Puts `bytes` into the cache under their hash, unless already there, and
/// returns the hash. This is what `submit` does with a local module or input.
pub async fn put_content(store: &dyn ObjectStore, bytes: Bytes) -> Result<String, InfraError> {
    let hex = sha256_hex(&bytes);
    let key = sha256_key(&hex);
    match store.head(&key).await {
        Ok(meta) if meta.size == bytes.len() as u64 => return Ok(hex),
        Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(InfraError::Store(format!("checking {key}: {e}"))),
    }
    store
        .put(&key, PutPayload::from_bytes(bytes))
        .await
        .map_err(|e| InfraError::Store(format!("writing {key}: {e}")))?;
    Ok(hex)
}

/// Cache writes that staging started and the guest's run overlaps: a
/// fetched input is the job's as soon as it is on disk, and copying it into
/// the fleet's cache need not delay the guest. Each upload reads its own
/// hard link of the staged file (made beside the job's scratch folder, on
/// the same file system), so nothing the job does to its scratch folder can
/// disturb it.
#[derive(Debug, Clone)]
pub struct Uploads {
    /// Where the links go: the folder that holds jobs' scratch folders.
    spool: PathBuf,
    started: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Uploads {
    /// Uploads whose links go in `spool`.
    pub fn new(spool: &Path) -> Uploads {
        Uploads {
            spool: spool.to_path_buf(),
            started: Arc::default(),
        }
    }

    /// Runs `upload` on a copy of `file` (a hard link when the file system
    /// allows, else in line, on `file` itself).
    pub async fn add<F, Fut>(&self, file: &Path, upload: F) -> Result<(), InfraError>
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: std::future::Future<Output = Result<(), InfraError>> + Send + 'static,
    {
        let link = self
            .spool
            .join(format!("shoal-upload-{}", uuid::Uuid::new_v4().simple()));
        if tokio::fs::hard_link(file, &link).await.is_err() {
            // No link (another file system): copy in line. A failure still
            // costs only the cache entry, not the job, which has its input.
            if let Err(e) = upload(file.to_path_buf()).await {
                tracing::warn!(error = %e, "filling the cache; the next job fetches again");
            }
            return Ok(());
        }
        let task = upload(link.clone());
        let handle = tokio::spawn(async move {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "filling the cache; the next job fetches again");
            }
            let _ = tokio::fs::remove_file(&link).await;
        });
        self.started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(handle);
        Ok(())
    }

    /// Waits for every upload started so far. Failures were logged: the
    /// cache is an optimisation, and the job already has its input.
    pub async fn finish(&self) {
        let handles: Vec<_> =
            std::mem::take(&mut *self.started.lock().unwrap_or_else(|e| e.into_inner()));
        for handle in handles {
            let _ = handle.await;
        }
    }
}

/// Streams a fetched object into the file `dest`, hashing as it goes;
/// returns its size and lowercase hex SHA-256.
pub async fn write_object(
    got: object_store::GetResult,
    name: &str,
    dest: &Path,
) -> Result<(u64, String), InfraError> {
    let mut stream = got.into_stream();
    let mut sink = HashingFile::create(dest).await?;
    while let Some(chunk) = stream
        .try_next()
        .await
        .map_err(|e| InfraError::Store(format!("reading {name}: {e}")))?
    {
        sink.write(chunk).await?;
    }
    sink.finish().await
}

/// A file being written with its SHA-256 computed on the way, on a thread
/// of its own: hashing in line with the writes would halve a fast
/// download's throughput, and the chunks are shared (`Bytes`), not copied.
pub struct HashingFile {
    file: PlainFile,
    chunks: Option<tokio::sync::mpsc::Sender<Bytes>>,
    hasher: tokio::task::JoinHandle<[u8; 32]>,
}

impl HashingFile {
    /// Creates (or truncates) `path`.
    pub async fn create(path: &Path) -> Result<HashingFile, InfraError> {
        let file = PlainFile::create(path).await?;
        // A few chunks in flight: enough to keep both sides busy, little memory.
        let (chunks, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let hasher = tokio::task::spawn_blocking(move || {
            let mut hasher = Sha256::new();
            while let Some(chunk) = rx.blocking_recv() {
                hasher.update(&chunk);
            }
            hasher.finalize().into()
        });
        Ok(HashingFile {
            file,
            chunks: Some(chunks),
            hasher,
        })
    }

    /// Appends `chunk`.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), InfraError> {
        self.file.write(&chunk).await?;
        if let Some(chunks) = &self.chunks {
            // Waits only while the hasher is 8 chunks behind.
            chunks
                .send(chunk)
                .await
                .map_err(|_| InfraError::Disk("the hashing thread stopped".into()))?;
        }
        Ok(())
    }

    /// Flushes; returns the size and lowercase hex SHA-256.
    pub async fn finish(mut self) -> Result<(u64, String), InfraError> {
        let path = self.file.path.clone();
        let size = self.file.finish().await?;
        drop(self.chunks.take());
        let digest = self
            .hasher
            .await
            .map_err(|e| InfraError::Disk(format!("hashing {}: {e}", path.display())))?;
        Ok((size, hex::encode(digest)))
    }
}

/// Streams the object at `key` into the file `dest`; `false` when there is no such object.
pub async fn get_to_file(
    store: &dyn ObjectStore,
    key: &StorePath,
    dest: &Path,
) -> Result<bool, InfraError> {
    match store.get(key).await {
        Ok(got) => write_object(got, key.as_ref(), dest).await.map(|_| true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(InfraError::Store(format!("reading {key}: {e}"))),
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
    let disk = |e: std::io::Error| InfraError::Disk(format!("reading {}: {e}", src.display()));
    let store_err = |e: object_store::Error| InfraError::Store(format!("writing {key}: {e}"));
    let mut file = tokio::fs::File::open(src).await.map_err(disk)?;
    let size = file.metadata().await.map_err(disk)?.len();
    if size <= PART as u64 {
        let mut bytes = Vec::with_capacity(size as usize);
        file.read_to_end(&mut bytes).await.map_err(disk)?;
        let hex = sha256_hex(&bytes);
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
pub async fn cache_file(store: &dyn ObjectStore, src: &Path) -> Result<(u64, String), InfraError> {
    let temp = StorePath::from(format!("cache/tmp/{}", uuid::Uuid::new_v4().simple()));
    let (size, hex) = put_file(store, &temp, src).await?;
    let key = sha256_key(&hex);
    let committed = match store.head(&key).await {
        Ok(meta) if meta.size == size => store.delete(&temp).await,
        Ok(_) | Err(object_store::Error::NotFound { .. }) => store.rename(&temp, &key).await,
        Err(e) => Err(e),
    };
    if let Err(e) = committed {
        let _ = store.delete(&temp).await;
        return Err(InfraError::Store(format!("committing {key}: {e}")));
    }
    Ok((size, hex))
}

/// Streams a fetched object into the file `dest` as is (no hash: for
/// sources nobody addresses by content). Returns its size.
pub async fn copy_object(
    got: object_store::GetResult,
    name: &str,
    dest: &Path,
) -> Result<u64, InfraError> {
    let mut stream = got.into_stream();
    let mut sink = PlainFile::create(dest).await?;
    while let Some(chunk) = stream
        .try_next()
        .await
        .map_err(|e| InfraError::Store(format!("reading {name}: {e}")))?
    {
        sink.write(&chunk).await?;
    }
    sink.finish().await
}

/// A file written through a 1 MiB buffer, counting its bytes.
pub struct PlainFile {
    file: tokio::io::BufWriter<tokio::fs::File>,
    size: u64,
    path: PathBuf,
}

impl PlainFile {
    /// Creates (or truncates) `path`.
    pub async fn create(path: &Path) -> Result<PlainFile, InfraError> {
        let file = tokio::fs::File::create(path)
            .await
            .map_err(|e| InfraError::Disk(format!("creating {}: {e}", path.display())))?;
        Ok(PlainFile {
            file: tokio::io::BufWriter::with_capacity(1 << 20, file),
            size: 0,
            path: path.to_path_buf(),
        })
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends `chunk`.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), InfraError> {
        use tokio::io::AsyncWriteExt as _;
        self.size += chunk.len() as u64;
        self.file
            .write_all(chunk)
            .await
            .map_err(|e| InfraError::Disk(format!("writing {}: {e}", self.path.display())))
    }

    /// Flushes; returns the size.
    pub async fn finish(mut self) -> Result<u64, InfraError> {
        use tokio::io::AsyncWriteExt as _;
        self.file
            .flush()
            .await
            .map_err(|e| InfraError::Disk(format!("writing {}: {e}", self.path.display())))?;
        Ok(self.size)
    }
}
