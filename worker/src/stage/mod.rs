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
use crate::paths::GuestPath;
use base64::Engine as _;
use bytes::Bytes;
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
    /// Preopens: `/inputs` (read-only, when there are inputs) and each output mount.
    pub mounts: Vec<Mount>,
    /// Each output mount with its host folder.
    pub outputs: Vec<(JobOutput, PathBuf)>,
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

    /// Stages the module and inputs of `job` under `scratch` (an empty folder).
    pub async fn stage(&self, job: &Job, scratch: &Path) -> Result<Staged, Error> {
        let bytes = match &job.module.location {
            Location::Cid(spec) => self.fetch_cid_file(spec, scratch, "module").await?,
            _ => self.fetch(&job.module, "module").await?,
        };
        let module = ModuleBytes {
            sha256: Sha256::digest(&bytes).into(),
            bytes,
        };

        let mut mounts = Vec::new();
        if !job.inputs.is_empty() {
            let root = scratch.join("inputs");
            mkdir(&root).await?;
            for (i, input) in job.inputs.iter().enumerate() {
                let what = format!("input {i} ({})", input.path);
                let host = host_path(&root, &input.path);
                let bytes = match &input.source.location {
                    Location::Cid(spec) if input.source.unpack != Some(Unpack::Tar) => {
                        if let Some(parent) = host.parent() {
                            mkdir(parent).await?;
                        }
                        let car = scratch.join(format!("input-{i}.car"));
                        self.gateways
                            .stage(
                                self.store.as_ref(),
                                spec,
                                &host,
                                &car,
                                self.ipfs_limits(),
                                &what,
                            )
                            .await?;
                        continue;
                    }
                    Location::Cid(spec) => self.fetch_cid_file(spec, scratch, &what).await?,
                    _ => self.fetch(&input.source, &what).await?,
                };
                match input.source.unpack.unwrap_or(Unpack::File) {
                    Unpack::File => {
                        if let Some(parent) = host.parent() {
                            mkdir(parent).await?;
                        }
                        tokio::fs::write(&host, &bytes)
                            .await
                            .map_err(|e| InfraError::Disk(format!("writing {what}: {e}")))?;
                    }
                    Unpack::Tar => {
                        let dest = host.clone();
                        let max = self.limits.max_input_bytes;
                        tokio::task::spawn_blocking(move || tarball::unpack(&bytes, &dest, max))
                            .await
                            .map_err(|e| InfraError::Disk(format!("unpacking {what}: {e}")))?
                            .map_err(|e| match e {
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
                    }
                }
            }
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
            mounts,
            outputs,
        })
    }

    /// The bytes of one source, verified and size-capped.
    pub async fn fetch(&self, source: &Source, what: &str) -> Result<Bytes, Error> {
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
                if got.meta.size > self.limits.max_input_bytes {
                    return Err(JobError::new(
                        ErrorKind::InputTooLarge,
                        format!(
                            "{what}: {} bytes is more than the {} allowed",
                            got.meta.size, self.limits.max_input_bytes
                        ),
                    )
                    .into());
                }
                let bytes = got
                    .bytes()
                    .await
                    .map_err(|e| InfraError::Store(format!("reading {key}: {e}")))?;
                let actual = sha256_hex(&bytes);
                if &actual != hex {
                    return Err(JobError::new(
                        ErrorKind::Integrity,
                        format!("{what}: cache entry {key} hashes to {actual}, not {hex}"),
                    )
                    .into());
                }
                Ok(bytes)
            }
            Location::Inline(text) => {
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
                    .map_err(|e| {
                        JobError::invalid(format!("{what}: inline content is not base64: {e}"))
                    })?;
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
            Location::Url(url) => {
                self.urls
                    .fetch(self.store.as_ref(), url, what, self.limits.max_input_bytes)
                    .await
            }
            Location::S3(uri) => self.fetch_s3(uri, what).await,
            Location::Cid(_) => Err(JobError::invalid(format!(
                "{what}: a cid source is staged into a job's scratch folder, not fetched on its own"
            ))
            .into()),
        }
    }

    fn ipfs_limits(&self) -> ipfs::Limits {
        ipfs::Limits {
            max_bytes: self.limits.max_input_bytes,
            max_files: self.limits.max_input_files,
        }
    }

    /// A `cid` source that must be one file (a module, or a tar to unpack):
    /// staged in `scratch`, then read.
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

/// Streams the object at `key` into the file `dest`; `false` when there is no such object.
pub async fn get_to_file(
    store: &dyn ObjectStore,
    key: &StorePath,
    dest: &Path,
) -> Result<bool, InfraError> {
    use futures::TryStreamExt as _;
    use tokio::io::AsyncWriteExt as _;
    let got = match store.get(key).await {
        Ok(got) => got,
        Err(object_store::Error::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(InfraError::Store(format!("reading {key}: {e}"))),
    };
    let disk = |e: std::io::Error| InfraError::Disk(format!("writing {}: {e}", dest.display()));
    let mut file = tokio::io::BufWriter::new(tokio::fs::File::create(dest).await.map_err(disk)?);
    let mut stream = got.into_stream();
    while let Some(chunk) = stream
        .try_next()
        .await
        .map_err(|e| InfraError::Store(format!("reading {key}: {e}")))?
    {
        file.write_all(&chunk).await.map_err(disk)?;
    }
    file.flush().await.map_err(disk)?;
    Ok(true)
}

/// Uploads the file `src` to `key` without holding it in memory: one put
/// when small, a multipart upload otherwise. Readers see the object only
/// once it is complete (S3 and the local store both commit atomically), so
/// two workers writing the same content-addressed key cannot corrupt it.
pub async fn put_file(
    store: &dyn ObjectStore,
    key: &StorePath,
    src: &Path,
) -> Result<(), InfraError> {
    use tokio::io::AsyncReadExt as _;
    const PART: usize = 8 << 20;
    let disk = |e: std::io::Error| InfraError::Disk(format!("reading {}: {e}", src.display()));
    let store_err = |e: object_store::Error| InfraError::Store(format!("writing {key}: {e}"));
    let mut file = tokio::fs::File::open(src).await.map_err(disk)?;
    let size = file.metadata().await.map_err(disk)?.len();
    if size <= PART as u64 {
        let mut bytes = Vec::with_capacity(size as usize);
        file.read_to_end(&mut bytes).await.map_err(disk)?;
        store
            .put(key, PutPayload::from(bytes))
            .await
            .map_err(store_err)?;
        return Ok(());
    }
    let upload = store.put_multipart(key).await.map_err(store_err)?;
    let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PART);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).await.map_err(disk)?;
        if n == 0 {
            break;
        }
        writer.wait_for_capacity(2).await.map_err(store_err)?;
        writer.write(&buf[..n]);
    }
    writer.finish().await.map_err(store_err)?;
    Ok(())
}

impl Stager {
    /// One object from a bucket, read with the worker's own S3 endpoint and
    /// credentials (`cache.s3_*`). Not copied into the cache: it already
    /// sits in the same kind of store, next to the fleet.
    async fn fetch_s3(&self, uri: &str, what: &str) -> Result<Bytes, Error> {
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
                "{what}: {uri} is a prefix; this worker stages single objects only so far"
            ))
            .into());
        }
        let config = CacheSection {
            s3_bucket: bucket.to_owned(),
            ..self.s3.clone()
        };
        let store = open_store(&config).map_err(InfraError::Store)?;
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
        let max = self.limits.max_input_bytes;
        if got.meta.size > max {
            return Err(JobError::new(
                ErrorKind::InputTooLarge,
                format!(
                    "{what}: {uri} is {} bytes, more than the {max} allowed",
                    got.meta.size
                ),
            )
            .into());
        }
        got.bytes()
            .await
            .map_err(|e| InfraError::Store(format!("reading {uri}: {e}")).into())
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
