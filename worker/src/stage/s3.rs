//! `s3` sources: one object, or every object under a prefix, read with the
//! worker's own S3 endpoint and credentials.
use super::{Amount, Stager, mkdir};
use crate::config::CacheSection;
use crate::error::{Cause, Error, InfraError, JobError};
use crate::store::{copy_object, open as open_store};
use futures::TryStreamExt as _;
use object_store::{ObjectStore, ObjectStoreExt, path::Path as StorePath};
use shoal_schemas::ErrorKind;
use std::path::Path;
use std::sync::Arc;

impl Stager {
    /// One object from a bucket, read with the worker's own S3 endpoint and
    /// credentials (`cache.s3_*`). Not copied into the cache: it already
    /// sits in the same kind of store, next to the fleet.
    pub(super) async fn fetch_s3(&self, uri: &str, what: &str, dest: &Path) -> Result<u64, Error> {
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
                "{what}: {uri} is a prefix; a module or a tar archive is one object"
            ))
            .into());
        }
        let store = self.bucket(bucket)?;
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
            Err(e) => return Err(InfraError::Store(Cause::new(format!("reading {uri}"), e)).into()),
        };
        self.check_size(got.meta.size, uri, what)?;
        Ok(copy_object(got, uri, dest).await?)
    }
}

impl Stager {
    /// The worker's S3 endpoint and credentials, on another bucket: never
    /// the fleet's own store (its cache, results and compiled code are not
    /// a job's to read), and only buckets `staging.s3_allow` lists, if set.
    fn bucket(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>, Error> {
        let refused = |why: String| -> Error {
            JobError::new(ErrorKind::InputRefused, format!("s3://{bucket}: {why}")).into()
        };
        if !self.s3.s3_bucket.is_empty() && bucket == self.s3.s3_bucket {
            return Err(refused(
                "is this fleet's own store (cache, results, compiled code); jobs may not read it"
                    .into(),
            ));
        }
        if !self.s3_allow.is_empty() && !self.s3_allow.iter().any(|b| b == bucket) {
            return Err(refused(format!(
                "is not one of the buckets staging.s3_allow lets jobs read ({})",
                self.s3_allow.join(", ")
            )));
        }
        if self.s3.s3_virtual_hosted && !self.s3.s3_endpoint.is_empty() {
            // object_store then sends every request to the endpoint as
            // given, whatever the bucket: it would read the store's own.
            return Err(refused(
                "s3 sources need path-style requests with a custom endpoint (cache.s3_virtual_hosted = false)".into(),
            ));
        }
        let config = CacheSection {
            s3_bucket: bucket.to_owned(),
            ..self.s3.clone()
        };
        Ok(open_store(&config).map_err(|e| InfraError::Store(e.into()))?)
    }

    /// Every object under an `s3://bucket/prefix/`, as files and folders
    /// under `dest`, within the input caps.
    pub(super) async fn fetch_s3_prefix(
        &self,
        uri: &str,
        what: &str,
        dest: &Path,
    ) -> Result<Amount, Error> {
        let (bucket, prefix) = uri
            .strip_prefix("s3://")
            .and_then(|rest| rest.split_once('/'))
            .filter(|(bucket, _)| !bucket.is_empty())
            .ok_or_else(|| {
                JobError::invalid(format!("{what}: write s3://BUCKET/PREFIX/, not {uri:?}"))
            })?;
        let store = self.bucket(bucket)?;
        let prefix = StorePath::parse(prefix.trim_end_matches('/'))
            .map_err(|e| JobError::invalid(format!("{what}: {uri}: {e}")))?;
        let listing_error = |e: object_store::Error| -> Error {
            match e {
                object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. } => JobError::new(
                    ErrorKind::InputUnavailable,
                    format!("{what}: {uri} cannot be listed with this worker's credentials: {e}"),
                )
                .into(),
                e => InfraError::Store(Cause::new(format!("listing {uri}"), e)).into(),
            }
        };
        mkdir(dest).await?;
        let (max_bytes, max_files) = (self.limits.max_input_bytes, self.limits.max_input_files);
        let mut amount = Amount { bytes: 0, files: 0 };
        let mut listing = store.list(Some(&prefix));
        while let Some(meta) = listing.try_next().await.map_err(listing_error)? {
            let Some(parts) = meta.location.prefix_match(&prefix) else {
                continue;
            };
            let parts: Vec<String> = parts.map(|p| p.as_ref().to_owned()).collect();
            if parts.is_empty() {
                continue;
            }
            if let Some(bad) = parts
                .iter()
                .find(|p| p.is_empty() || *p == "." || *p == ".." || p.contains(['/', '\\', '\0']))
            {
                return Err(JobError::new(
                    ErrorKind::InputRefused,
                    format!("{what}: {uri}: object {} has a name part {bad:?} that cannot be a file name", meta.location),
                )
                .into());
            }
            amount.files += 1;
            amount.bytes += meta.size;
            if amount.bytes > max_bytes || amount.files > max_files {
                return Err(JobError::new(
                    ErrorKind::InputTooLarge,
                    format!("{what}: {uri} holds more than {max_bytes} bytes or {max_files} objects (limits.max_input_bytes, limits.max_input_files)"),
                )
                .into());
            }
            let mut target = dest.to_path_buf();
            target.extend(&parts);
            if let Some(parent) = target.parent() {
                mkdir(parent).await?;
            }
            let got = store.get(&meta.location).await.map_err(|e| {
                InfraError::Store(Cause::new(format!("reading {}", meta.location), e))
            })?;
            copy_object(got, meta.location.as_ref(), &target).await?;
        }
        if amount.files == 0 {
            return Err(JobError::new(
                ErrorKind::InputUnavailable,
                format!("{what}: there are no objects under {uri}"),
            )
            .into());
        }
        Ok(amount)
    }
}
