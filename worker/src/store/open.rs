//! Opening the store the configuration names.
use crate::config::CacheSection;
use crate::error::Cause;
use object_store::ObjectStore;
use std::path::PathBuf;
use std::sync::Arc;

/// The store the configuration names could not be opened: ours to fix
/// (configuration, credentials, disk), never a job's.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The S3 client could not be built from `cache.s3_*`.
    #[error("opening S3 bucket {bucket}: {source}")]
    S3 {
        /// `cache.s3_bucket`.
        bucket: String,
        /// Why object_store refused the settings.
        #[source]
        source: object_store::Error,
    },
    /// The local cache folder (`cache.dir`) could not be created.
    #[error("creating cache folder {}: {source}", dir.display())]
    CreateFolder {
        /// `cache.dir`.
        dir: PathBuf,
        /// Why the folder could not be made.
        #[source]
        source: std::io::Error,
    },
    /// The local cache folder exists but could not be opened as a store.
    #[error("opening cache folder {}: {source}", dir.display())]
    OpenFolder {
        /// `cache.dir`.
        dir: PathBuf,
        /// Why object_store refused the folder.
        #[source]
        source: object_store::Error,
    },
}

/// The same words as the [`OpenError`], with its cause kept as the source,
/// for code that reports a store failure as an [`crate::error::InfraError`].
impl From<OpenError> for Cause {
    fn from(e: OpenError) -> Cause {
        match e {
            OpenError::S3 { bucket, source } => {
                Cause::new(format!("opening S3 bucket {bucket}"), source)
            }
            OpenError::CreateFolder { dir, source } => {
                Cause::new(format!("creating cache folder {}", dir.display()), source)
            }
            OpenError::OpenFolder { dir, source } => {
                Cause::new(format!("opening cache folder {}", dir.display()), source)
            }
        }
    }
}

/// Opens the store the configuration names: the content cache and the
/// results store in one. An S3 bucket when `cache.s3_bucket` is set (the
/// fleet's shared store), else the local folder `cache.dir` (the embedded
/// default).
pub fn open(cache: &CacheSection) -> Result<Arc<dyn ObjectStore>, OpenError> {
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
        let store = builder.build().map_err(|source| OpenError::S3 {
            bucket: cache.s3_bucket.clone(),
            source,
        })?;
        return Ok(Arc::new(store));
    }
    std::fs::create_dir_all(&cache.dir).map_err(|source| OpenError::CreateFolder {
        dir: cache.dir.clone(),
        source,
    })?;
    let store =
        object_store::local::LocalFileSystem::new_with_prefix(&cache.dir).map_err(|source| {
            OpenError::OpenFolder {
                dir: cache.dir.clone(),
                source,
            }
        })?;
    Ok(Arc::new(store))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_that_cannot_be_made_is_named_and_kept_as_the_cause() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let dir = file.path().join("cache");
        let cache = CacheSection {
            dir: dir.clone(),
            ..crate::Config::load_from(None, std::iter::empty())
                .unwrap()
                .cache
        };
        let Err(e) = open(&cache) else {
            panic!("a folder under a file opened")
        };
        assert!(matches!(e, OpenError::CreateFolder { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("creating cache folder {}: ", dir.display())),
            "{text}"
        );
        assert!(std::error::Error::source(&e).is_some());
        // As the store's failure: the same words, the same cause.
        let cause = Cause::from(e);
        assert_eq!(cause.to_string(), text);
        assert!(std::error::Error::source(&cause).is_some());
    }
}
