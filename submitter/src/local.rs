//! Running jobs in-process (`submit run --local`): local files are put into
//! the embedded cache by hash, then the worker's own pipeline runs the job.
use crate::{Location, Source, Unpack};
use indicatif::{ProgressBar, ProgressStyle};
pub use shoal_worker::stage::{Stager, open_store};
use shoal_worker::stage::{pack_dir, put_content};
use std::path::Path;

pub use shoal_worker::Config;
pub use shoal_worker::config::{AmqpSection, LimitValues};
pub use shoal_worker::execute::Mount;
pub use shoal_worker::pipeline::{Embedded, LocalOptions};

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
    let (bytes, unpack) = if meta.is_dir() {
        let dir = path.to_path_buf();
        let archive = tokio::task::spawn_blocking(move || pack_dir(&dir))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("packing {}: {e}", path.display()))?;
        (archive, Some(Unpack::Tar))
    } else {
        (read_with_progress(path, meta.len()).await?, None)
    };
    let hex = put_content(stager.store().as_ref(), bytes.into())
        .await
        .map_err(|e| format!("uploading {}: {e}", path.display()))?;
    Ok(Source {
        location: Location::Sha256(hex),
        name,
        unpack,
    })
}

async fn read_with_progress(path: &Path, len: u64) -> Result<Vec<u8>, String> {
    use tokio::io::AsyncReadExt;
    let bar = if len >= PROGRESS_BYTES {
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(format!("uploading {}", path.display()));
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::with_capacity(len as usize);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(out)
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
    let bar = if total >= PROGRESS_BYTES {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("downloading {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    for output in &result.outputs {
        let folder = dir.join(&output.name);
        std::fs::create_dir_all(&folder).map_err(|e| e.to_string())?;
        let prefix = output
            .location
            .clone()
            .unwrap_or_else(|| format!("results/{}/{}/", result.job_id, output.name));
        for file in &output.files {
            let bytes = get(format!("{prefix}{}", file.path)).await?;
            if shoal_worker::stage::sha256_hex(&bytes) != file.sha256 {
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

/// Reads `results/<id>/result.json` from the store.
pub async fn stored_result(
    store: &dyn object_store::ObjectStore,
    id: &str,
) -> Result<Option<crate::ResultMessage>, String> {
    shoal_worker::publish::store::get_result(store, id)
        .await
        .map_err(|e| e.to_string())
}
