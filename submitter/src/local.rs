//! Running jobs in-process (`submit run --local`): local files are put into
//! the embedded cache by hash, then the worker's own pipeline runs the job.
use crate::{Location, Source, Unpack};
use indicatif::{ProgressBar, ProgressStyle};
pub use shoal_worker::stage::Stager;
use shoal_worker::stage::pack_dir;
pub use shoal_worker::store::open as open_store;
use shoal_worker::store::put_content;
use std::path::Path;

pub use shoal_worker::Config;
pub use shoal_worker::config::{AmqpSection, LimitValues};
pub use shoal_worker::execute::Mount;
pub use shoal_worker::pipeline::{LocalOptions, Pipeline};

/// Files at least this large get a progress bar while they are read.
const PROGRESS_BYTES: u64 = 8 << 20;

/// Puts a local file (as is) or folder (as a tar archive) into the cache and
/// returns the source that names it.
pub async fn upload_path(stager: &Stager, path: &Path) -> Result<Source, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
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
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("packing {}: {e}", path.display()))?;
        let hex = put_content(store, archive.into())
            .await
            .map_err(|e| format!("uploading {}: {e}", path.display()))?;
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
) -> Result<String, String> {
    use object_store::ObjectStoreExt as _;
    use sha2::Digest as _;
    use tokio::io::AsyncReadExt as _;
    let failed = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let hashing = bar(len, format!("hashing {}", path.display()));
    let mut file = tokio::fs::File::open(path).await.map_err(|e| failed(&e))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).await.map_err(|e| failed(&e))?;
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
        Err(e) => return Err(format!("checking {key}: {e}")),
    }
    let uploading = bar(len, format!("uploading {}", path.display()));
    let progress = {
        let uploading = uploading.clone();
        move |n: u64| uploading.inc(n)
    };
    let (_, sent) = shoal_worker::store::put_file_with(store, &key, path, &progress)
        .await
        .map_err(|e| failed(&e))?;
    uploading.finish_and_clear();
    if sent != hex {
        let _ = store.delete(&key).await;
        return Err(failed(
            &"the file changed while it was being uploaded; try again",
        ));
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
) -> Result<(), String> {
    use base64::Engine as _;
    use object_store::{ObjectStoreExt, path::Path as StorePath};
    let get = |key: String| async move {
        let key = StorePath::parse(&key).map_err(|e| format!("{key}: {e}"))?;
        let got = store
            .get(&key)
            .await
            .map_err(|e| format!("fetching {key}: {e}"))?;
        got.bytes()
            .await
            .map_err(|e| format!("fetching {key}: {e}"))
    };
    shoal_worker::publish::local::prepare(dir).map_err(|e| e.to_string())?;
    for (name, stream) in [("stdout", &result.stdout), ("stderr", &result.stderr)] {
        let bytes: Vec<u8> = match stream {
            None => Vec::new(),
            Some(s) => match (&s.text, &s.base64, &s.location) {
                (Some(text), _, _) => text.as_bytes().to_vec(),
                (None, Some(b64), _) => base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| e.to_string())?,
                (None, None, Some(location)) => get(location.clone()).await?.to_vec(),
                (None, None, None) => Vec::new(),
            },
        };
        std::fs::write(dir.join(name), bytes).map_err(|e| format!("writing {name}: {e}"))?;
    }
    if let Some(code) = result.exit_code {
        std::fs::write(dir.join("exitCode"), code.to_string()).map_err(|e| e.to_string())?;
    }
    let total: u64 = result.outputs.iter().map(|o| o.bytes).sum();
    let bar = bar(total, "downloading".into());
    for output in &result.outputs {
        let folder = dir.join(&output.name);
        std::fs::create_dir_all(&folder).map_err(|e| e.to_string())?;
        let prefix = output
            .location
            .clone()
            .unwrap_or_else(|| format!("results/{}/{}/", result.job_id, output.name));
        for file in &output.files {
            let bytes = get(format!("{prefix}{}", file.path)).await?;
            if shoal_worker::store::sha256_hex(&bytes) != file.sha256 {
                return Err(format!(
                    "output {}/{} does not match its manifest hash",
                    output.name, file.path
                ));
            }
            let target = folder.join(&file.path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            std::fs::write(&target, &bytes)
                .map_err(|e| format!("writing {}: {e}", target.display()))?;
            bar.inc(file.size);
        }
    }
    bar.finish_and_clear();
    shoal_worker::publish::local::write_result(dir, result).map_err(|e| e.to_string())
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
pub async fn cache_stats(store: &dyn object_store::ObjectStore) -> Result<Vec<CacheKind>, String> {
    use futures::TryStreamExt as _;
    let kinds = ["sha256", "url", "cid", "compiled", "tmp", "other"];
    let mut counts = vec![(0u64, 0u64); kinds.len()];
    let prefix = object_store::path::Path::from("cache");
    let mut listing = store.list(Some(&prefix));
    while let Some(meta) = listing
        .try_next()
        .await
        .map_err(|e| format!("listing the cache: {e}"))?
    {
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
) -> Result<Option<crate::ResultMessage>, String> {
    shoal_worker::publish::store::get_result(store, id)
        .await
        .map_err(|e| e.to_string())
}
