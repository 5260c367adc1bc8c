//! Cache writes that overlap the guest's run.
use crate::error::InfraError;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
