//! Running jobs in-process (`submit run --local`): local files are put into
//! the embedded cache by hash, then the worker's own pipeline runs the job.
use crate::{Location, Source, Unpack};
use indicatif::{ProgressBar, ProgressStyle};
use object_store::path::Path as StorePath;
use shoal_worker::error::InfraError;
use shoal_worker::stage::pack_dir;
pub use shoal_worker::stage::{SetupError, Stager};
use shoal_worker::store::put_content;
pub use shoal_worker::store::{OpenError, open as open_store};
use std::path::{Path, PathBuf};

pub use shoal_worker::Config;
pub use shoal_worker::config::{AmqpSection, LimitValues};
pub use shoal_worker::execute::Mount;
pub use shoal_worker::pipeline::{LocalOptions, Pipeline};

/// Files at least this large get a progress bar while they are read.
const PROGRESS_BYTES: u64 = 8 << 20;

/// Moving files between this machine and the store failed. Each message
/// names the local file, store key or step; the error underneath is the
/// source. A local file that cannot be read or written is the user's to
/// fix; a store failure ([`InfraError`]) is ours.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A local file or folder could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A folder could not be packed as a tar archive.
    #[error("packing {}: {source}", path.display())]
    Pack {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The packing thread failed (panicked or was cancelled).
    #[error(transparent)]
    Join(tokio::task::JoinError),
    /// A packed folder could not be put into the store.
    #[error("uploading {}: {source}", path.display())]
    UploadFolder {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: InfraError,
    },
    /// A file could not be streamed into the store.
    #[error("{}: {source}", path.display())]
    UploadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: InfraError,
    },
    /// The store did not say whether it holds a file's content already.
    #[error("checking {key}: {source}")]
    Check {
        /// The content's key.
        key: StorePath,
        /// Why.
        #[source]
        source: object_store::Error,
    },
    /// The file's hash after uploading is not the hash read before.
    #[error("{}: the file changed while it was being uploaded; try again", path.display())]
    Changed {
        /// The file.
        path: PathBuf,
    },
    /// A result names a location that is not a store key.
    #[error("{key}: {source}")]
    Key {
        /// The location as the result gives it.
        key: String,
        /// Why it is not a key.
        #[source]
        source: object_store::path::Error,
    },
    /// An object a result names could not be read from the store.
    #[error("fetching {key}: {source}")]
    Fetch {
        /// The object's key.
        key: StorePath,
        /// Why.
        #[source]
        source: object_store::Error,
    },
    /// A result's base64 stream does not decode.
    #[error(transparent)]
    Base64(base64::DecodeError),
    /// A file of the result could not be written.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file, as the message names it (`stdout`, or its path).
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file or folder of the result could not be made.
    #[error(transparent)]
    Io(std::io::Error),
    /// An output file does not match the hash its manifest gives.
    #[error("output {output}/{file} does not match its manifest hash")]
    Mismatch {
        /// The output mount's name.
        output: String,
        /// The file's path in it.
        file: String,
    },
    /// The cache could not be listed.
    #[error("listing the cache: {0}")]
    List(#[source] object_store::Error),
    /// The download folder or the results store failed.
    #[error(transparent)]
    Infra(InfraError),
}

/// Puts a local file (as is) or folder (as a tar archive) into the cache and
/// returns the source that names it.
pub async fn upload_path(stager: &Stager, path: &Path) -> Result<Source, LocalError> {
    let meta = std::fs::metadata(path).map_err(|source| LocalError::Read {
        path: path.to_owned(),
        source,
    })?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .map(str::to_owned);
    let store = stager.store().as_ref();
    let (hex, unpack) = if meta.is_dir() {
        let dir = path.to_path_buf();
        let archive = tokio::task::spawn_blocking(move || pack_dir(&dir))
            .await
            .map_err(LocalError::Join)?
            .map_err(|source| LocalError::Pack {
                path: path.to_owned(),
                source,
            })?;
        let hex = put_content(store, archive.into()).await.map_err(|source| {
            LocalError::UploadFolder {
                path: path.to_owned(),
                source,
            }
        })?;
        (hex, Some(Unpack::Tar))
    } else {
        (upload_file(store, path, meta.len()).await?, None)
    };
    Ok(Source {
        location: Location::Sha256(hex),
        name,
        unpack,
    })
}

fn bar(len: u64, message: String) -> ProgressBar {
    if len < PROGRESS_BYTES {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(message);
    bar
}

/// Streams a file into the cache under its hash (hashed first, so content
/// already there is not sent again), with progress bars for large files.
async fn upload_file(
    store: &dyn object_store::ObjectStore,
    path: &Path,
    len: u64,
) -> Result<String, LocalError> {
    use object_store::ObjectStoreExt as _;
    use sha2::Digest as _;
    use tokio::io::AsyncReadExt as _;
    let unreadable = |source: std::io::Error| LocalError::Read {
        path: path.to_owned(),
        source,
    };
    let hashing = bar(len, format!("hashing {}", path.display()));
    let mut file = tokio::fs::File::open(path).await.map_err(unreadable)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).await.map_err(unreadable)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        hashing.inc(n as u64);
    }
    hashing.finish_and_clear();
    let hex = hex::encode(hasher.finalize());
    let key = shoal_worker::store::keys::sha256(&hex);
    match store.head(&key).await {
        Ok(meta) if meta.size == len => return Ok(hex),
        Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
        Err(source) => return Err(LocalError::Check { key, source }),
    }
    let uploading = bar(len, format!("uploading {}", path.display()));
    let progress = {
        let uploading = uploading.clone();
        move |n: u64| uploading.inc(n)
    };
    let (_, sent) = shoal_worker::store::put_file_with(store, &key, path, &progress)
        .await
        .map_err(|source| LocalError::UploadFile {
            path: path.to_owned(),
            source,
        })?;
    uploading.finish_and_clear();
    if sent != hex {
        let _ = store.delete(&key).await;
        return Err(LocalError::Changed {
            path: path.to_owned(),
        });
    }
    Ok(hex)
}

/// Reproduces a stored result's layout in `dir` (the same layout as
/// `submit run --local`): stdout, stderr, exitCode, one folder per output
/// mount, and result.json last. Each file is checked against its manifest hash.
pub async fn download(
    store: &dyn object_store::ObjectStore,
    result: &crate::ResultMessage,
    dir: &Path,
) -> Result<(), LocalError> {
    use base64::Engine as _;
    use object_store::ObjectStoreExt;
    let get = |key: String| async move {
        let key = match StorePath::parse(&key) {
            Ok(parsed) => parsed,
            Err(source) => return Err(LocalError::Key { key, source }),
        };
        let got = match store.get(&key).await {
            Ok(got) => got,
            Err(source) => return Err(LocalError::Fetch { key, source }),
        };
        got.bytes()
            .await
            .map_err(|source| LocalError::Fetch { key, source })
    };
    shoal_worker::publish::local::prepare(dir).map_err(LocalError::Infra)?;
    for (name, stream) in [("stdout", &result.stdout), ("stderr", &result.stderr)] {
        let bytes: Vec<u8> = match stream {
            None => Vec::new(),
            Some(s) => match (&s.text, &s.base64, &s.location) {
                (Some(text), _, _) => text.as_bytes().to_vec(),
                (None, Some(b64), _) => base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(LocalError::Base64)?,
                (None, None, Some(location)) => get(location.clone()).await?.to_vec(),
                (None, None, None) => Vec::new(),
            },
        };
        std::fs::write(dir.join(name), bytes).map_err(|source| LocalError::Write {
            path: PathBuf::from(name),
            source,
        })?;
    }
    // exitCode is written with result.json, by write_result.
    let total: u64 = result.outputs.iter().map(|o| o.bytes).sum();
    let bar = bar(total, "downloading".into());
    for output in &result.outputs {
        let folder = dir.join(&output.name);
        std::fs::create_dir_all(&folder).map_err(LocalError::Io)?;
        let prefix = output.location.clone().unwrap_or_else(|| {
            shoal_worker::store::keys::output_prefix(&result.job_id, &output.name)
        });
        for file in &output.files {
            let bytes = get(format!("{prefix}{}", file.path)).await?;
            if shoal_worker::store::sha256_hex(&bytes) != file.sha256 {
                return Err(LocalError::Mismatch {
                    output: output.name.clone(),
                    file: file.path.clone(),
                });
            }
            let target = folder.join(&file.path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(LocalError::Io)?;
            }
            if let Err(source) = std::fs::write(&target, &bytes) {
                return Err(LocalError::Write {
                    path: target,
                    source,
                });
            }
            bar.inc(file.size);
        }
    }
    bar.finish_and_clear();
    shoal_worker::publish::local::write_result(dir, result).map_err(LocalError::Infra)
}

/// One kind of cache entry, for `submit cache stats`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CacheKind {
    /// `sha256`, `url`, `cid`, `compiled`, `tmp` or `other`.
    pub kind: String,
    /// Objects of this kind.
    pub objects: u64,
    /// Their total size.
    pub bytes: u64,
}

/// Counts what the cache (`cache/` in the store) holds, by kind.
pub async fn cache_stats(
    store: &dyn object_store::ObjectStore,
) -> Result<Vec<CacheKind>, LocalError> {
    use futures::TryStreamExt as _;
    let kinds = ["sha256", "url", "cid", "compiled", "tmp", "other"];
    let mut counts = vec![(0u64, 0u64); kinds.len()];
    let prefix = shoal_worker::store::keys::cache();
    let mut listing = store.list(Some(&prefix));
    while let Some(meta) = listing.try_next().await.map_err(LocalError::List)? {
        let kind = meta
            .location
            .prefix_match(&prefix)
            .and_then(|mut parts| parts.next())
            .map(|p| p.as_ref().to_owned())
            .unwrap_or_default();
        let i = kinds
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(kinds.len() - 1);
        counts[i].0 += 1;
        counts[i].1 += meta.size;
    }
    Ok(kinds
        .iter()
        .zip(counts)
        .map(|(kind, (objects, bytes))| CacheKind {
            kind: (*kind).to_owned(),
            objects,
            bytes,
        })
        .collect())
}

/// Reads `results/<id>/result.json` from the store.
pub async fn stored_result(
    store: &dyn object_store::ObjectStore,
    id: &str,
) -> Result<Option<crate::ResultMessage>, InfraError> {
    shoal_worker::publish::get_result(store, id).await
}
