//! Opening the store the configuration names.
use crate::config::CacheSection;
use object_store::ObjectStore;
use std::sync::Arc;

/// Opens the store the configuration names: the content cache and the
/// results store in one. An S3 bucket when `cache.s3_bucket` is set (the
/// fleet's shared store), else the local folder `cache.dir` (the embedded
/// default).
pub fn open(cache: &CacheSection) -> Result<Arc<dyn ObjectStore>, String> {
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
