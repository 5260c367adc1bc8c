//! Local files written from the store's streams: buffered, counted, and
//! hashed on the way when the content is addressed by its hash.
use crate::error::{Cause, InfraError};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A file being written with its SHA-256 computed on the way, on a thread
/// of its own: hashing in line with the writes would halve a fast
/// download's throughput, and the chunks are shared (`Bytes`), not copied.
pub(crate) struct HashingFile {
    file: PlainFile,
    chunks: Option<tokio::sync::mpsc::Sender<Bytes>>,
    hasher: tokio::task::JoinHandle<[u8; 32]>,
}

impl HashingFile {
    /// Creates (or truncates) `path`.
    pub(super) async fn create(path: &Path) -> Result<HashingFile, InfraError> {
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
    pub(super) async fn write(&mut self, chunk: Bytes) -> Result<(), InfraError> {
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
    pub(super) async fn finish(mut self) -> Result<(u64, String), InfraError> {
        let path = self.file.path.clone();
        let size = self.file.finish().await?;
        drop(self.chunks.take());
        let digest = self
            .hasher
            .await
            .map_err(|e| InfraError::Disk(Cause::new(format!("hashing {}", path.display()), e)))?;
        Ok((size, hex::encode(digest)))
    }
}

/// A file written through a 1 MiB buffer, counting its bytes.
pub(crate) struct PlainFile {
    file: tokio::io::BufWriter<tokio::fs::File>,
    size: u64,
    path: PathBuf,
}

impl PlainFile {
    /// Creates (or truncates) `path`.
    pub(crate) async fn create(path: &Path) -> Result<PlainFile, InfraError> {
        let file = tokio::fs::File::create(path)
            .await
            .map_err(|e| InfraError::Disk(Cause::new(format!("creating {}", path.display()), e)))?;
        Ok(PlainFile {
            file: tokio::io::BufWriter::with_capacity(1 << 20, file),
            size: 0,
            path: path.to_path_buf(),
        })
    }

    /// Bytes written so far.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Appends `chunk`.
    pub(crate) async fn write(&mut self, chunk: &[u8]) -> Result<(), InfraError> {
        use tokio::io::AsyncWriteExt as _;
        self.size += chunk.len() as u64;
        self.file.write_all(chunk).await.map_err(|e| {
            InfraError::Disk(Cause::new(format!("writing {}", self.path.display()), e))
        })
    }

    /// Flushes; returns the size.
    pub(crate) async fn finish(mut self) -> Result<u64, InfraError> {
        use tokio::io::AsyncWriteExt as _;
        self.file.flush().await.map_err(|e| {
            InfraError::Disk(Cause::new(format!("writing {}", self.path.display()), e))
        })?;
        Ok(self.size)
    }
}
