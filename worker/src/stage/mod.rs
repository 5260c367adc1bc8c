//! Stage (step 2 of a job): bring the module and every input into the
//! job's scratch directory, through the content-addressed cache.
//!
//! The cache is the fleet's store (`crate::store`; its keys are listed in
//! `store/keys.rs`), keyed by content.
//! Content read back from the cache is hashed again, so a corrupted entry is
//! an `integrity` failure rather than a silently wrong input. One module per
//! kind of source: [`url`], [`ipfs`], `s3`; `sha256` and inline content are
//! read here.
//!
//! It owns the host side of the guest's file system: `inputs/` (read-only in
//! the guest) and one empty folder per output mount. It does not run
//! anything and does not look at outputs.
mod ipfs;
mod s3;
pub(crate) mod scratch;
mod tarball;
mod url;

use crate::config::{CacheSection, Config, LimitsSection};
use crate::error::{Cause, Error, InfraError, JobError};
use crate::execute::{ModuleBytes, Mount};
use crate::job::{Job, JobOutput};
use crate::metrics::METRICS;
use crate::paths::GuestPath;
use base64::Engine as _;
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};
use shoal_schemas::{ErrorKind, Location, Source, Unpack};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::store::{Uploads, keys, sha256_hex, write_object};
pub use tarball::pack_dir;

/// The job's host-side file system, ready to mount.
#[derive(Debug)]
pub(crate) struct Staged {
    /// The module's bytes and hash; no bytes when the caller said it holds
    /// the module already.
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

/// `[staging]` is not usable, so no stager could be built: the operator's
/// configuration (or the host's TLS setup) is at fault, never a job.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `staging.url_allow` does not parse.
    #[error("staging.url_allow: {0}")]
    UrlAllow(#[source] crate::config::CidrError),
    /// The HTTP client for `url` sources could not be built.
    #[error("building the HTTP client: {0}")]
    UrlClient(#[source] reqwest::Error),
    /// An entry of `staging.ipfs_gateways` is not a URL.
    #[error("staging.ipfs_gateways: {gateway:?} is not a URL: {source}")]
    Gateway {
        /// The entry as configured (trimmed, without a trailing slash).
        gateway: String,
        /// Why it did not parse.
        #[source]
        source: ::url::ParseError,
    },
    /// The HTTP client for the gateways could not be built.
    #[error("building the gateway client: {0}")]
    GatewayClient(#[source] reqwest::Error),
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
    /// Buckets `s3://` sources may name (empty: any but the store's own).
    s3_allow: Vec<String>,
}

impl Stager {
    /// A stager reading from `store`, with the configuration's limits and
    /// staging settings.
    pub fn new(store: Arc<dyn ObjectStore>, config: &Config) -> Result<Self, SetupError> {
        Ok(Stager {
            store,
            limits: config.limits.clone(),
            urls: url::UrlFetcher::new(&config.staging)?,
            gateways: ipfs::Gateways::new(&config.staging)?,
            s3: config.cache.clone(),
            s3_allow: config
                .staging
                .s3_allow
                .split(',')
                .map(|b| b.trim().to_owned())
                .filter(|b| !b.is_empty())
                .collect(),
        })
    }

    /// The cache.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Stages the module and inputs of `job` under `scratch` (an empty
    /// folder, or one from [`scratch::ScratchPool`]). Inputs are staged in parallel, each streamed to disk.
    ///
    /// `have_module`: the hash of a module the caller already holds
    /// compiled (the job named it by that sha256, so nothing about it can
    /// have changed); its bytes are not fetched. Import modules are fetched
    /// either way.
    pub(crate) async fn stage(
        &self,
        job: &Job,
        scratch: &Path,
        have_module: Option<[u8; 32]>,
    ) -> Result<Staged, Error> {
        // Links for uploads go beside the scratch folder, never in it.
        let uploads = Uploads::new(scratch.parent().unwrap_or(scratch));
        let staged = self.stage_with(job, scratch, have_module, &uploads).await;
        if staged.is_err() {
            uploads.finish().await;
        }
        staged
    }

    async fn stage_with(
        &self,
        job: &Job,
        scratch: &Path,
        have_module: Option<[u8; 32]>,
        uploads: &Uploads,
    ) -> Result<Staged, Error> {
        let module = match have_module {
            Some(sha256) => ModuleBytes {
                sha256,
                bytes: Bytes::new(),
            },
            None => self.module(&job.module, "module", scratch, uploads).await?,
        };
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
            let host = scratch.join(scratch::output_folder(i));
            // A pooled scratch folder has the first one made already.
            if !(i == 0 && host.is_dir()) {
                mkdir(&host).await?;
            }
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
            // Straight into memory: no file in scratch to create, read and remove.
            Location::Sha256(hex) => {
                let (got, key) = self.cached(hex, what).await?;
                let bytes = got
                    .bytes()
                    .await
                    .map_err(|e| InfraError::Store(Cause::new(format!("reading {key}"), e)))?;
                let actual = sha256_hex(&bytes);
                if &actual != hex {
                    return Err(integrity(what, &key, &actual, hex));
                }
                bytes
            }
            _ => {
                let file = scratch.join(format!("module-{}.wasm", uuid::Uuid::new_v4().simple()));
                self.fetch_to(source, what, &file, uploads).await?;
                let bytes = tokio::fs::read(&file)
                    .await
                    .map_err(|e| InfraError::Disk(Cause::new(format!("reading {what}"), e)))?;
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
                if input.path == GuestPath::inputs_root() {
                    return self
                        .stage_cid_at_root(spec, source, root, &car, scratch, &what)
                        .await;
                }
                let unpacked = self.stage_cid(spec, &host, &car, &what).await?;
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
                let unpacked = self.stage_cid(spec, &archive, &car, &what).await?;
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
            .map_err(|e| InfraError::Disk(Cause::new(format!("opening {what}"), e)))?;
        let unpacked = tokio::task::spawn_blocking(move || {
            tarball::unpack(std::io::BufReader::new(file), &dest, max_bytes, max_files)
        })
        .await
        .map_err(|e| InfraError::Disk(Cause::new(format!("unpacking {what}"), e)))?;
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
                Error::Infra(InfraError::Disk(Cause::new(what.to_string(), msg)))
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
                let (got, key) = self.cached(hex, what).await?;
                let (size, actual) = write_object(got, key.as_ref(), dest).await?;
                if &actual != hex {
                    return Err(integrity(what, &key, &actual, hex));
                }
                Ok(size)
            }
            Location::Inline(text) => {
                let bytes = self.inline(text, what)?;
                tokio::fs::write(dest, &bytes)
                    .await
                    .map_err(|e| InfraError::Disk(Cause::new(format!("writing {what}"), e)))?;
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

    /// The cache entry of content named by its sha256, size-checked.
    async fn cached(
        &self,
        hex: &str,
        what: &str,
    ) -> Result<(object_store::GetResult, object_store::path::Path), Error> {
        let key = keys::sha256(hex);
        let got = match self.store.get(&key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(JobError::new(
                    ErrorKind::InputUnavailable,
                    format!("{what}: sha256 {hex} is not in the cache; upload it first (submit does this for local files)"),
                )
                .into());
            }
            Err(e) => return Err(InfraError::Store(Cause::new(format!("reading {key}"), e)).into()),
        };
        self.check_size(got.meta.size, key.as_ref(), what)?;
        Ok((got, key))
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

    /// A `cid` source unpacked at `dest` (a file or a folder), its CAR kept at `car` meanwhile.
    async fn stage_cid(
        &self,
        spec: &str,
        dest: &Path,
        car: &Path,
        what: &str,
    ) -> Result<ipfs::Unpacked, Error> {
        let limits = ipfs::Limits {
            max_bytes: self.limits.max_input_bytes,
            max_files: self.limits.max_input_files,
        };
        self.gateways
            .stage(self.store.as_ref(), spec, dest, car, limits, what)
            .await
    }

    /// A `cid` source mounted at `/inputs` itself (Bacalhau's place for a
    /// CID given without a path; `Job::resolve` makes it the job's only
    /// input). A folder becomes `/inputs`; a single file cannot (a preopen
    /// is a folder), so it appears as `/inputs/<its name>`, as it would
    /// without the path. Unpacked beside `root` first, since which it is
    /// shows only once the DAG is read.
    async fn stage_cid_at_root(
        &self,
        spec: &str,
        source: &Source,
        root: &Path,
        car: &Path,
        scratch: &Path,
        what: &str,
    ) -> Result<Amount, Error> {
        let tree = scratch.join("input-root");
        let unpacked = self.stage_cid(spec, &tree, car, what).await?;
        let target = match unpacked.kind {
            ipfs::Kind::Directory => {
                tokio::fs::remove_dir(root).await.map_err(|e| {
                    InfraError::Disk(Cause::new(format!("replacing {}", root.display()), e))
                })?;
                root.to_path_buf()
            }
            ipfs::Kind::File => match source.display_name() {
                name if name == "." || name == ".." => root.join("input"),
                name => root.join(name),
            },
        };
        tokio::fs::rename(&tree, &target)
            .await
            .map_err(|e| InfraError::Disk(Cause::new(format!("moving {what} into place"), e)))?;
        Ok(Amount {
            bytes: unpacked.bytes,
            files: unpacked.files + unpacked.dirs,
        })
    }

    /// A `cid` source that must be one file (a module): staged in `scratch`, then read.
    async fn fetch_cid_file(&self, spec: &str, scratch: &Path, what: &str) -> Result<Bytes, Error> {
        let dest = scratch.join(format!("cid-{}", uuid::Uuid::new_v4().simple()));
        let car = dest.with_extension("car");
        let unpacked = self.stage_cid(spec, &dest, &car, what).await?;
        if unpacked.kind != ipfs::Kind::File {
            let _ = tokio::fs::remove_dir_all(&dest).await;
            return Err(JobError::invalid(format!(
                "{what}: {spec} is a directory; name a file inside it (CID/path/to/file)"
            ))
            .into());
        }
        let bytes = tokio::fs::read(&dest)
            .await
            .map_err(|e| InfraError::Disk(Cause::new(format!("reading {what}"), e)))?;
        let _ = tokio::fs::remove_file(&dest).await;
        Ok(Bytes::from(bytes))
    }
}

/// A cache entry whose bytes do not match its name: the store was corrupted.
fn integrity(what: &str, key: &object_store::path::Path, actual: &str, hex: &str) -> Error {
    JobError::new(
        ErrorKind::Integrity,
        format!("{what}: cache entry {key} hashes to {actual}, not {hex}"),
    )
    .into()
}

/// Inputs staged at once per job: enough to overlap several slow origins,
/// few enough not to flood one.
const PARALLEL_INPUTS: usize = 4;

/// What one staged input came to, for the job's totals.
struct Amount {
    bytes: u64,
    files: u64,
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
        .map_err(|e| InfraError::Disk(Cause::new(format!("creating {}", path.display()), e)))
}
