//! Running jobs in-process (`submit run --local`): local files are put into
//! the embedded cache by hash, then the worker's own pipeline runs the job.
use crate::{Location, Source, Unpack};
use indicatif::{ProgressBar, ProgressStyle};
use shoal_worker::stage::{Stager, pack_dir, put_content};
use std::path::Path;

pub use shoal_worker::Config;
pub use shoal_worker::config::LimitValues;
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
    Ok(Source { location: Location::Sha256(hex), name, unpack })
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
    let mut file = tokio::fs::File::open(path).await.map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::with_capacity(len as usize);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).await.map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}
