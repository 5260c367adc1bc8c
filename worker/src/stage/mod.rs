//! Stage (step 2 of a job): bring the module and every input into the
//! job's scratch directory, through the content-addressed cache.
//!
//! The cache is an `object_store` (a local directory in the embedded default;
//! S3 with the staging issue), keyed by content: `cache/sha256/<hex>`.
//! Content read back from the cache is hashed again, so a corrupted entry is
//! an `integrity` failure rather than a silently wrong input.
//!
//! It owns the host side of the guest's file system: `inputs/` (read-only in
//! the guest) and one empty folder per output mount. It does not run
//! anything and does not look at outputs.
pub mod compiled;
pub mod ipfs;
mod tarball;
pub mod url;

use crate::config::{CacheSection, Config, LimitsSection};
use crate::error::{Error, InfraError, JobError};
use crate::execute::{ModuleBytes, Mount};
use crate::job::{Job, JobOutput};
use crate::metrics::METRICS;
use crate::paths::GuestPath;
use base64::Engine as _;
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, path::Path as StorePath};
use sha2::{Digest, Sha256};
use shoal_schemas::{ErrorKind, Location, Source, Unpack};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use tarball::pack_dir;

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

/// The job's host-side file system, ready to mount.
#[derive(Debug)]
pub struct Staged {
    /// The module's bytes and hash.
    pub module: ModuleBytes,
    /// Import modules' bytes, by name, in instantiation order.
    pub imports: Vec<(String, ModuleBytes)>,
    /// Preopens: `/inputs` (read-only, when there are inputs) and each output mount.
    pub mounts: Vec<Mount>,
    /// Each output mount with its host folder.
    pub outputs: Vec<(JobOutput, PathBuf)>,
    /// Cache writes still going; await them before the job's result.
    pub uploads: Uploads,
}

/// Cache writes that staging started and the guest's run overlaps: a
/// fetched input is the job's as soon as it is on disk, and copying it into
/// the fleet's cache need not delay the guest. Each upload reads its own
/// hard link of the staged file (made in the system temp folder), so
/// nothing the job does to its scratch folder can disturb it.
#[derive(Debug, Clone, Default)]
pub struct Uploads(Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>);

impl Uploads {
    /// Runs `upload` on a copy of `file` (a hard link when the file system
    /// allows, else in line, on `file` itself).
    pub async fn add<F, Fut>(&self, file: &Path, upload: F) -> Result<(), InfraError>
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: std::future::Future<Output = Result<(), InfraError>> + Send + 'static,
    {
        let link =
            std::env::temp_dir().join(format!("shoal-upload-{}", uuid::Uuid::new_v4().simple()));
        if tokio::fs::hard_link(file, &link).await.is_err() {
            return upload(file.to_path_buf()).await;
        }
        let task = upload(link.clone());
        let handle = tokio::spawn(async move {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "filling the cache; the next job fetches again");
            }
            let _ = tokio::fs::remove_file(&link).await;
        });
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(handle);
        Ok(())
    }

    /// Waits for every upload started so far. Failures were logged: the
    /// cache is an optimisation, and the job already has its input.
    pub async fn finish(&self) {
        let handles: Vec<_> =
            std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        for handle in handles {
            let _ = handle.await;
        }
    }
}

/// Brings content into jobs' scratch directories.
#[derive(Clone)]
pub struct Stager {
    store: Arc<dyn ObjectStore>,
    limits: LimitsSection,
    urls: url::UrlFetcher,
    gateways: ipfs::Gateways,
    /// Endpoint and credentials for `s3://` sources: the store's own.
    s3: CacheSection,
}

impl Stager {
    /// A stager reading from `store`, with the configuration's limits and
    /// staging settings.
    pub fn new(store: Arc<dyn ObjectStore>, config: &Config) -> Result<Self, String> {
        Ok(Stager {
            store,
            limits: config.limits.clone(),
            urls: url::UrlFetcher::new(&config.staging)?,
            gateways: ipfs::Gateways::new(&config.staging)?,
            s3: config.cache.clone(),
        })
    }

    /// The cache.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Stages the module and inputs of `job` under `scratch` (an empty
    /// folder). Inputs are staged in parallel, each streamed to disk.
    pub async fn stage(&self, job: &Job, scratch: &Path) -> Result<Staged, Error> {
        let uploads = Uploads::default();
        let staged = self.stage_with(job, scratch, &uploads).await;
        if staged.is_err() {
            uploads.finish().await;
        }
        staged
    }

    async fn stage_with(
        &self,
        job: &Job,
        scratch: &Path,
        uploads: &Uploads,
    ) -> Result<Staged, Error> {
        let module = self.module(&job.module, "module", scratch, uploads).await?;
        let mut imports = Vec::with_capacity(job.imports.len());
        for (name, source) in &job.imports {
            let what = format!("import module {name}");
            imports.push((
                name.clone(),
                self.module(source, &what, scratch, uploads).await?,
            ));
        }

        let mut mounts = Vec::new();
        if !job.inputs.is_empty() {
            let root = scratch.join("inputs");
            mkdir(&root).await?;
            // Futures built up front (they do nothing until polled): a
            // `map` closure here trips the compiler's `Send` inference.
            let futures: Vec<_> = job
                .inputs
                .iter()
                .enumerate()
                .map(|(i, input)| {
                    let root = &root;
                    async move {
                        let amount = self.input(i, input, root, scratch, uploads).await?;
                        METRICS
                            .staged_bytes
                            .with_label_values(&[source_kind(&input.source.location)])
                            .inc_by(amount.bytes);
                        Ok::<_, Error>(amount)
                    }
                })
                .collect();
            let mut staged = futures::stream::iter(futures).buffer_unordered(PARALLEL_INPUTS);
            let (mut bytes, mut files) = (0u64, 0u64);
            // The first error ends staging; dropping the stream cancels the rest.
            while let Some(amount) = staged.try_next().await? {
                bytes += amount.bytes;
                files += amount.files;
                let max_bytes = self.limits.max_job_input_bytes;
                let max_files = self.limits.max_job_input_files;
                if bytes > max_bytes || files > max_files {
                    return Err(JobError::new(
                        ErrorKind::InputTooLarge,
                        format!(
                            "the job's inputs come to more than {max_bytes} bytes or {max_files} files and folders (limits.max_job_input_bytes, limits.max_job_input_files)"
                        ),
                    )
                    .into());
                }
            }
            drop(staged);
            mounts.push(Mount {
                host: root,
                guest: GuestPath::inputs_root().to_string(),
                writable: false,
            });
        }

        let mut outputs = Vec::new();
        for (i, out) in job.outputs.iter().enumerate() {
            // Named by index, not by the mount's name, so no name can clash
            // with another folder of the scratch directory.
            let host = scratch.join(format!("out-{i}"));
            mkdir(&host).await?;
            mounts.push(Mount {
                host: host.clone(),
                guest: out.path.to_string(),
                writable: true,
            });
            outputs.push((out.clone(), host));
        }
        Ok(Staged {
            module,
            imports,
            mounts,
            outputs,
            uploads: uploads.clone(),
        })
    }

    /// The module's bytes: staged like an input, then read (it is compiled from memory).
    async fn module(
        &self,
        source: &Source,
        what: &str,
        scratch: &Path,
        uploads: &Uploads,
    ) -> Result<ModuleBytes, Error> {
        let bytes = match &source.location {
            Location::Cid(spec) => self.fetch_cid_file(spec, scratch, what).await?,
            Location::Inline(text) => self.inline(text, what)?,
            _ => {
                let file = scratch.join(format!("module-{}.wasm", uuid::Uuid::new_v4().simple()));
                self.fetch_to(source, what, &file, uploads).await?;
                let bytes = tokio::fs::read(&file)
                    .await
                    .map_err(|e| InfraError::Disk(format!("reading {what}: {e}")))?;
                let _ = tokio::fs::remove_file(&file).await;
                Bytes::from(bytes)
            }
        };
        METRICS
            .staged_bytes
            .with_label_values(&[source_kind(&source.location)])
            .inc_by(bytes.len() as u64);
        Ok(ModuleBytes {
            sha256: Sha256::digest(&bytes).into(),
            bytes,
        })
    }

    /// Stages input `i` at its place under `root`.
    async fn input(
        &self,
        i: usize,
        input: &crate::job::JobInput,
        root: &Path,
        scratch: &Path,
        uploads: &Uploads,
    ) -> Result<Amount, Error> {
        let what = format!("input {i} ({})", input.path);
        let host = host_path(root, &input.path);
        if let Some(parent) = host.parent() {
            mkdir(parent).await?;
        }
        let source = &input.source;
        if source.unpack.unwrap_or(Unpack::File) == Unpack::File {
            if let Location::Cid(spec) = &source.location {
                let car = scratch.join(format!("input-{i}.car"));
                let unpacked = self
                    .gateways
                    .stage(
                        self.store.as_ref(),
                        spec,
                        &host,
                        &car,
                        self.ipfs_limits(),
                        &what,
                    )
                    .await?;
                return Ok(Amount {
                    bytes: unpacked.bytes,
                    files: unpacked.files + unpacked.dirs,
                });
            }
            if let Location::S3(uri) = &source.location
                && uri.ends_with('/')
            {
                return self.fetch_s3_prefix(uri, &what, &host).await;
            }
            let bytes = self.fetch_to(source, &what, &host, uploads).await?;
            return Ok(Amount { bytes, files: 1 });
        }

        // A tar archive: staged as a file in scratch, unpacked as a stream.
        let archive = scratch.join(format!("input-{i}.tar"));
        match &source.location {
            Location::Cid(spec) => {
                let car = scratch.join(format!("input-{i}.car"));
                let unpacked = self
                    .gateways
                    .stage(
                        self.store.as_ref(),
                        spec,
                        &archive,
                        &car,
                        self.ipfs_limits(),
                        &what,
                    )
                    .await?;
                if unpacked.kind != ipfs::Kind::File {
                    return Err(JobError::invalid(format!(
                        "{what}: {spec} is a folder, not a tar archive; drop \"unpack\": \"tar\""
                    ))
                    .into());
                }
            }
            _ => {
                self.fetch_to(source, &what, &archive, uploads).await?;
            }
        }
        let (max_bytes, max_files) = (self.limits.max_input_bytes, self.limits.max_input_files);
        let dest = host.clone();
        let file = std::fs::File::open(&archive)
            .map_err(|e| InfraError::Disk(format!("opening {what}: {e}")))?;
        let unpacked = tokio::task::spawn_blocking(move || {
            tarball::unpack(std::io::BufReader::new(file), &dest, max_bytes, max_files)
        })
        .await
        .map_err(|e| InfraError::Disk(format!("unpacking {what}: {e}")))?;
        let _ = tokio::fs::remove_file(&archive).await;
        let (bytes, files) = unpacked.map_err(|e| match e {
            tarball::UnpackError::Job(msg) => Error::Job(JobError::new(
                ErrorKind::InvalidJob,
                format!("{what}: {msg}"),
            )),
            tarball::UnpackError::TooLarge(msg) => Error::Job(JobError::new(
                ErrorKind::InputTooLarge,
                format!("{what}: {msg}"),
            )),
            tarball::UnpackError::Disk(msg) => {
                Error::Infra(InfraError::Disk(format!("{what}: {msg}")))
            }
        })?;
        Ok(Amount { bytes, files })
    }

    /// Streams one source into the file `dest`, verified and size-capped,
    /// and returns its size. Memory stays flat whatever the size.
    pub async fn fetch_to(
        &self,
        source: &Source,
        what: &str,
        dest: &Path,
        uploads: &Uploads,
    ) -> Result<u64, Error> {
        match &source.location {
            Location::Sha256(hex) => {
                let key = sha256_key(hex);
                let got = match self.store.get(&key).await {
                    Ok(got) => got,
                    Err(object_store::Error::NotFound { .. }) => {
                        return Err(JobError::new(
                            ErrorKind::InputUnavailable,
                            format!("{what}: sha256 {hex} is not in the cache; upload it first (submit does this for local files)"),
                        )
                        .into());
                    }
                    Err(e) => return Err(InfraError::Store(format!("reading {key}: {e}")).into()),
                };
                self.check_size(got.meta.size, key.as_ref(), what)?;
                let (size, actual) = write_object(got, key.as_ref(), dest).await?;
                if &actual != hex {
                    return Err(JobError::new(
                        ErrorKind::Integrity,
                        format!("{what}: cache entry {key} hashes to {actual}, not {hex}"),
                    )
                    .into());
                }
                Ok(size)
            }
            Location::Inline(text) => {
                let bytes = self.inline(text, what)?;
                tokio::fs::write(dest, &bytes)
                    .await
                    .map_err(|e| InfraError::Disk(format!("writing {what}: {e}")))?;
                Ok(bytes.len() as u64)
            }
            Location::Url(url) => {
                self.urls
                    .fetch_to(
                        &self.store,
                        url,
                        what,
                        self.limits.max_input_bytes,
                        dest,
                        uploads,
                    )
                    .await
            }
            Location::S3(uri) => self.fetch_s3(uri, what, dest).await,
            Location::Cid(_) => Err(JobError::invalid(format!(
                "{what}: a cid source is staged by the gateways, not fetched as one file"
            ))
            .into()),
        }
    }

    fn check_size(&self, size: u64, name: &str, what: &str) -> Result<(), Error> {
        let max = self.limits.max_input_bytes;
        if size > max {
            return Err(JobError::new(
                ErrorKind::InputTooLarge,
                format!("{what}: {name} is {size} bytes, more than the {max} allowed (limits.max_input_bytes)"),
            )
            .into());
        }
        Ok(())
    }

    /// Decodes inline content, capped by `limits.max_inline_bytes`.
    fn inline(&self, text: &str, what: &str) -> Result<Bytes, Error> {
        // Checked before decoding: base64 is 4 characters per 3 bytes.
        let max = self.limits.max_inline_bytes;
        if (text.len() as u64) / 4 * 3 > max + 3 {
            return Err(JobError::new(
                ErrorKind::InputTooLarge,
                format!("{what}: inline content is larger than the {max} bytes allowed"),
            )
            .into());
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| JobError::invalid(format!("{what}: inline content is not base64: {e}")))?;
        if bytes.len() as u64 > max {
            return Err(JobError::new(
                ErrorKind::InputTooLarge,
                format!(
                    "{what}: inline content is {} bytes, more than the {max} allowed",
                    bytes.len()
                ),
            )
            .into());
        }
        Ok(Bytes::from(bytes))
    }

    fn ipfs_limits(&self) -> ipfs::Limits {
        ipfs::Limits {
            max_bytes: self.limits.max_input_bytes,
            max_files: self.limits.max_input_files,
        }
    }

    /// A `cid` source that must be one file (a module): staged in `scratch`, then read.
    async fn fetch_cid_file(&self, spec: &str, scratch: &Path, what: &str) -> Result<Bytes, Error> {
        let dest = scratch.join(format!("cid-{}", uuid::Uuid::new_v4().simple()));
        let car = dest.with_extension("car");
        let unpacked = self
            .gateways
            .stage(
                self.store.as_ref(),
                spec,
                &dest,
                &car,
                self.ipfs_limits(),
                what,
            )
            .await?;
        if unpacked.kind != ipfs::Kind::File {
            let _ = tokio::fs::remove_dir_all(&dest).await;
            return Err(JobError::invalid(format!(
                "{what}: {spec} is a directory; name a file inside it (CID/path/to/file)"
            ))
            .into());
        }
        let bytes = tokio::fs::read(&dest)
            .await
            .map_err(|e| InfraError::Disk(format!("reading {what}: {e}")))?;
        let _ = tokio::fs::remove_file(&dest).await;
        Ok(Bytes::from(bytes))
    }
}

/// Inputs staged at once per job: enough to overlap several slow origins,
/// few enough not to flood one.
const PARALLEL_INPUTS: usize = 4;

/// What one staged input came to, for the job's totals.
struct Amount {
    bytes: u64,
    files: u64,
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
    file: tokio::io::BufWriter<tokio::fs::File>,
    chunks: Option<tokio::sync::mpsc::Sender<Bytes>>,
    hasher: tokio::task::JoinHandle<[u8; 32]>,
    size: u64,
    path: PathBuf,
}

impl HashingFile {
    /// Creates (or truncates) `path`.
    pub async fn create(path: &Path) -> Result<HashingFile, InfraError> {
        let file = tokio::fs::File::create(path)
            .await
            .map_err(|e| InfraError::Disk(format!("creating {}: {e}", path.display())))?;
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
            file: tokio::io::BufWriter::with_capacity(1 << 20, file),
            chunks: Some(chunks),
            hasher,
            size: 0,
            path: path.to_path_buf(),
        })
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends `chunk`.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), InfraError> {
        use tokio::io::AsyncWriteExt as _;
        self.size += chunk.len() as u64;
        self.file
            .write_all(&chunk)
            .await
            .map_err(|e| InfraError::Disk(format!("writing {}: {e}", self.path.display())))?;
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
        use tokio::io::AsyncWriteExt as _;
        self.file
            .flush()
            .await
            .map_err(|e| InfraError::Disk(format!("writing {}: {e}", self.path.display())))?;
        drop(self.chunks.take());
        let digest = self
            .hasher
            .await
            .map_err(|e| InfraError::Disk(format!("hashing {}: {e}", self.path.display())))?;
        Ok((self.size, hex::encode(digest)))
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

impl Stager {
    /// One object from a bucket, read with the worker's own S3 endpoint and
    /// credentials (`cache.s3_*`). Not copied into the cache: it already
    /// sits in the same kind of store, next to the fleet.
    async fn fetch_s3(&self, uri: &str, what: &str, dest: &Path) -> Result<u64, Error> {
        let Some((bucket, key)) = uri
            .strip_prefix("s3://")
            .and_then(|rest| rest.split_once('/'))
            .filter(|(bucket, key)| !bucket.is_empty() && !key.is_empty())
        else {
            return Err(
                JobError::invalid(format!("{what}: write s3://BUCKET/KEY, not {uri:?}")).into(),
            );
        };
        if key.ends_with('/') {
            return Err(JobError::invalid(format!(
                "{what}: {uri} is a prefix; a module or a tar archive is one object"
            ))
            .into());
        }
        let store = self.bucket(bucket)?;
        let path =
            StorePath::parse(key).map_err(|e| JobError::invalid(format!("{what}: {uri}: {e}")))?;
        let unavailable = |why: String| -> Error {
            JobError::new(ErrorKind::InputUnavailable, format!("{what}: {uri} {why}")).into()
        };
        let got = match store.get(&path).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(unavailable("does not exist".into()));
            }
            Err(
                e @ (object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }),
            ) => {
                return Err(unavailable(format!(
                    "cannot be read with this worker's credentials: {e}"
                )));
            }
            Err(e) => return Err(InfraError::Store(format!("reading {uri}: {e}")).into()),
        };
        self.check_size(got.meta.size, uri, what)?;
        Ok(copy_object(got, uri, dest).await?)
    }
}

impl Stager {
    /// The worker's S3 endpoint and credentials, on another bucket.
    fn bucket(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>, Error> {
        let config = CacheSection {
            s3_bucket: bucket.to_owned(),
            ..self.s3.clone()
        };
        Ok(open_store(&config).map_err(InfraError::Store)?)
    }

    /// Every object under an `s3://bucket/prefix/`, as files and folders
    /// under `dest`, within the input caps.
    async fn fetch_s3_prefix(&self, uri: &str, what: &str, dest: &Path) -> Result<Amount, Error> {
        let (bucket, prefix) = uri
            .strip_prefix("s3://")
            .and_then(|rest| rest.split_once('/'))
            .filter(|(bucket, _)| !bucket.is_empty())
            .ok_or_else(|| {
                JobError::invalid(format!("{what}: write s3://BUCKET/PREFIX/, not {uri:?}"))
            })?;
        let store = self.bucket(bucket)?;
        let prefix = StorePath::parse(prefix.trim_end_matches('/'))
            .map_err(|e| JobError::invalid(format!("{what}: {uri}: {e}")))?;
        let listing_error = |e: object_store::Error| -> Error {
            match e {
                object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. } => JobError::new(
                    ErrorKind::InputUnavailable,
                    format!("{what}: {uri} cannot be listed with this worker's credentials: {e}"),
                )
                .into(),
                e => InfraError::Store(format!("listing {uri}: {e}")).into(),
            }
        };
        mkdir(dest).await?;
        let (max_bytes, max_files) = (self.limits.max_input_bytes, self.limits.max_input_files);
        let mut amount = Amount { bytes: 0, files: 0 };
        let mut listing = store.list(Some(&prefix));
        while let Some(meta) = listing.try_next().await.map_err(listing_error)? {
            let Some(parts) = meta.location.prefix_match(&prefix) else {
                continue;
            };
            let parts: Vec<String> = parts.map(|p| p.as_ref().to_owned()).collect();
            if parts.is_empty() {
                continue;
            }
            if let Some(bad) = parts
                .iter()
                .find(|p| p.is_empty() || *p == "." || *p == ".." || p.contains(['/', '\\', '\0']))
            {
                return Err(JobError::new(
                    ErrorKind::InputRefused,
                    format!("{what}: {uri}: object {} has a name part {bad:?} that cannot be a file name", meta.location),
                )
                .into());
            }
            amount.files += 1;
            amount.bytes += meta.size;
            if amount.bytes > max_bytes || amount.files > max_files {
                return Err(JobError::new(
                    ErrorKind::InputTooLarge,
                    format!("{what}: {uri} holds more than {max_bytes} bytes or {max_files} objects (limits.max_input_bytes, limits.max_input_files)"),
                )
                .into());
            }
            let mut target = dest.to_path_buf();
            target.extend(&parts);
            if let Some(parent) = target.parent() {
                mkdir(parent).await?;
            }
            let got = store
                .get(&meta.location)
                .await
                .map_err(|e| InfraError::Store(format!("reading {}: {e}", meta.location)))?;
            copy_object(got, meta.location.as_ref(), &target).await?;
        }
        if amount.files == 0 {
            return Err(JobError::new(
                ErrorKind::InputUnavailable,
                format!("{what}: there are no objects under {uri}"),
            )
            .into());
        }
        Ok(amount)
    }
}

/// The `source` label of a location, for metrics.
fn source_kind(location: &Location) -> &'static str {
    match location {
        Location::Sha256(_) => "sha256",
        Location::Url(_) => "url",
        Location::Cid(_) => "cid",
        Location::S3(_) => "s3",
        Location::Inline(_) => "inline",
    }
}

fn host_path(root: &Path, guest: &GuestPath) -> PathBuf {
    let mut host = root.to_path_buf();
    for c in guest
        .relative_to(&GuestPath::inputs_root())
        .unwrap_or_default()
    {
        host.push(c);
    }
    host
}

async fn mkdir(path: &Path) -> Result<(), InfraError> {
    tokio::fs::create_dir_all(path)
        .await
        .map_err(|e| InfraError::Disk(format!("creating {}: {e}", path.display())))
}
