//! `cid` sources: `CID[/path/inside]` fetched as a CAR from trustless
//! gateways, verified block by block, unpacked as files and folders.
//!
//! Gateways are the operator's choice (`staging.ipfs_gateways`, tried in
//! order), not the job's, so they are not address-guarded like URL sources;
//! they are also not trusted: every block is checked against its CID, so a
//! gateway can only fail to answer, never change the content.
//!
//! The CAR is streamed to a file in the job's scratch folder and read back
//! by offset, so memory stays flat whatever the size. Only after every block
//! verified and the tree was written out is the CAR copied into the cache
//! (`cache/cid/<cid>.car`, or `cache/cid/<cid>/<sha256 of the path>.car`),
//! where a later job finds it without asking any gateway; it is verified
//! again when read, and a cached CAR that fails is dropped and fetched anew.
use crate::config::StagingSection;
use crate::error::{Error, InfraError, JobError};
use crate::stage::SetupError;
use crate::store::{PlainFile, get_to_file, keys, put_file};
use object_store::{ObjectStore, ObjectStoreExt, path::Path as StorePath};
use reqwest::header::ACCEPT;
use shoal_ipfs::{BlockFile, CarError, Cid, Limits, UnixfsError, Unpacked, unpack};
use shoal_schemas::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a CAR may weigh beyond the content it carries: CIDs, links and
/// headers. A gateway that sends more than the content cap plus this is cut off.
const CAR_OVERHEAD: u64 = 16 << 20;

/// Fetches `cid` sources through the configured gateways.
#[derive(Clone)]
pub(crate) struct Gateways {
    client: reqwest::Client,
    urls: Vec<String>,
}

/// A parsed `CID[/path/inside]`.
struct Target {
    cid: Cid,
    path: Vec<String>,
}

/// A `cid` source that does not parse (the job's fault), or a gateway that
/// cannot hold it (the operator's).
#[derive(Debug, thiserror::Error)]
enum TargetError {
    #[error("{cid:?} is not a CID: {source}")]
    NotCid {
        cid: String,
        #[source]
        source: shoal_ipfs::CidError,
    },
    #[error("the path inside {cid} may not contain {part:?}")]
    DotPath { cid: String, part: String },
    #[error("gateway {gateway:?} is not a URL: {source}")]
    GatewayUrl {
        gateway: String,
        #[source]
        source: url::ParseError,
    },
    #[error("gateway {gateway:?} cannot be a base URL")]
    NotBase { gateway: String },
}

impl Target {
    fn parse(spec: &str) -> Result<Target, TargetError> {
        let mut parts = spec.split('/');
        let cid = parts.next().unwrap_or_default();
        let cid = Cid::parse(cid).map_err(|source| TargetError::NotCid {
            cid: cid.to_owned(),
            source,
        })?;
        let path: Vec<String> = parts.filter(|p| !p.is_empty()).map(str::to_owned).collect();
        if let Some(bad) = path.iter().find(|p| *p == "." || *p == "..") {
            return Err(TargetError::DotPath {
                cid: cid.to_string(),
                part: bad.clone(),
            });
        }
        Ok(Target { cid, path })
    }

    fn cache_key(&self) -> StorePath {
        keys::cid_car(&self.cid.to_string(), &self.path.join("/"))
    }

    /// `/ipfs/<cid>/<percent-encoded path>?format=car` under a gateway's base URL.
    fn url(&self, gateway: &str) -> Result<reqwest::Url, TargetError> {
        let mut url = reqwest::Url::parse(gateway).map_err(|source| TargetError::GatewayUrl {
            gateway: gateway.to_owned(),
            source,
        })?;
        url.path_segments_mut()
            .map_err(|()| TargetError::NotBase {
                gateway: gateway.to_owned(),
            })?
            .pop_if_empty()
            .push("ipfs")
            .push(&self.cid.to_string())
            .extend(&self.path);
        url.set_query(Some("format=car"));
        Ok(url)
    }
}

/// Why one gateway did not deliver.
enum Miss {
    /// 404 or 410: the gateway could not find the content.
    NotFound(String),
    /// A block did not match its CID.
    Integrity(String),
    /// Anything else: unreachable, 5xx, truncated or incomplete CAR.
    Failed(String),
}

impl Miss {
    fn message(&self) -> &str {
        match self {
            Miss::NotFound(m) | Miss::Integrity(m) | Miss::Failed(m) => m,
        }
    }
}

impl Gateways {
    /// Gateways from `staging.ipfs_gateways`, with the URL timeouts.
    pub(crate) fn new(staging: &StagingSection) -> Result<Gateways, SetupError> {
        let urls: Vec<String> = staging
            .ipfs_gateways
            .split(',')
            .map(|s| s.trim().trim_end_matches('/').to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        for url in &urls {
            reqwest::Url::parse(url).map_err(|source| SetupError::Gateway {
                gateway: url.clone(),
                source,
            })?;
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(staging.url_connect_timeout_secs))
            .read_timeout(Duration::from_secs(staging.url_read_timeout_secs))
            .build()
            .map_err(SetupError::GatewayClient)?;
        Ok(Gateways { client, urls })
    }

    /// Stages `spec` (`CID[/path]`) at `dest` (a file or a folder, as the
    /// content is), using `work` for the CAR. `limits` caps the content.
    pub(crate) async fn stage(
        &self,
        store: &dyn ObjectStore,
        spec: &str,
        dest: &Path,
        work: &Path,
        limits: Limits,
        what: &str,
    ) -> Result<Unpacked, Error> {
        let target = Target::parse(spec).map_err(|e| JobError::invalid(format!("{what}: {e}")))?;
        let key = target.cache_key();
        let car = work.to_path_buf();

        if get_to_file(store, &key, &car).await? {
            match open_and_unpack(&car, &target, dest, limits).await {
                Ok(unpacked) => {
                    remove(&car).await;
                    crate::metrics::METRICS.cache_lookup("cid", true);
                    return Ok(unpacked);
                }
                Err(Unpack::Content(e)) => return Err(content_error(e, spec, what)),
                Err(Unpack::Source(why)) => {
                    tracing::warn!(%key, why = why.message(), "cached CAR is unusable; dropping it and asking the gateways");
                    clear(dest).await;
                    if let Err(e) = store.delete(&key).await {
                        tracing::warn!(%key, error = %e, "dropping a bad cached CAR");
                    }
                }
            }
        }

        crate::metrics::METRICS.cache_lookup("cid", false);
        if self.urls.is_empty() {
            return Err(JobError::new(
                ErrorKind::InputUnavailable,
                format!("{what}: {spec}: this worker has no IPFS gateway (staging.ipfs_gateways)"),
            )
            .into());
        }
        let cap = limits.max_bytes.saturating_add(CAR_OVERHEAD);
        let mut misses = Vec::new();
        for gateway in &self.urls {
            let miss = match self.download(gateway, &target, &car, cap).await {
                Err(miss) => miss,
                Ok(()) => match open_and_unpack(&car, &target, dest, limits).await {
                    Ok(unpacked) => {
                        // The job has its input: a failed cache write costs
                        // only the next job's gateway request.
                        if let Err(e) = put_file(store, &key, &car).await {
                            tracing::warn!(%key, error = %e, "caching a CAR; the next job asks a gateway again");
                        }
                        remove(&car).await;
                        return Ok(unpacked);
                    }
                    Err(Unpack::Content(e)) => {
                        remove(&car).await;
                        return Err(content_error(e, spec, what));
                    }
                    Err(Unpack::Source(why)) => why,
                },
            };
            clear(dest).await;
            remove(&car).await;
            tracing::warn!(%gateway, cid = %spec, why = miss.message(), "gateway did not deliver; trying the next");
            misses.push((gateway.clone(), miss));
        }
        Err(give_up(misses, spec, what))
    }

    /// Streams the CAR for `target` from one gateway into `car`, at most `cap` bytes.
    async fn download(
        &self,
        gateway: &str,
        target: &Target,
        car: &Path,
        cap: u64,
    ) -> Result<(), Miss> {
        let url = target
            .url(gateway)
            .map_err(|e| Miss::Failed(e.to_string()))?;
        let mut response = self
            .client
            .get(url.clone())
            .header(ACCEPT, "application/vnd.ipld.car;version=1")
            .send()
            .await
            .map_err(|e| Miss::Failed(format!("{url}: {e}")))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::GONE {
            return Err(Miss::NotFound(format!("{url} answered {status}")));
        }
        if !status.is_success() {
            return Err(Miss::Failed(format!("{url} answered {status}")));
        }
        if response.content_length().is_some_and(|n| n > cap) {
            return Err(Miss::Failed(format!(
                "{url}: the CAR is larger than the {cap} bytes allowed"
            )));
        }
        // A local write failure counts as this attempt failing, like the gateway's.
        let disk = |e: InfraError| Miss::Failed(e.to_string());
        let mut file = PlainFile::create(car).await.map_err(disk)?;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| Miss::Failed(format!("{url}: {e}")))?
        {
            if file.size() + chunk.len() as u64 > cap {
                return Err(Miss::Failed(format!(
                    "{url}: the CAR is larger than the {cap} bytes allowed"
                )));
            }
            file.write(&chunk).await.map_err(disk)?;
        }
        file.finish().await.map_err(disk)?;
        Ok(())
    }
}

/// Why a CAR in hand could not be unpacked.
enum Unpack {
    /// The content itself is at fault: the same from every gateway.
    Content(UnixfsError),
    /// This copy is at fault (tampered, truncated, incomplete): another may do.
    Source(Miss),
}

async fn open_and_unpack(
    car: &Path,
    target: &Target,
    dest: &Path,
    limits: Limits,
) -> Result<Unpacked, Unpack> {
    let car: PathBuf = car.to_path_buf();
    let root = target.cid.clone();
    let path = target.path.clone();
    let dest = dest.to_path_buf();
    tokio::task::spawn_blocking(move || {
        // One block per file or folder, plus one per KiB of content: real
        // DAGs (256 KiB chunks) stay far below it, and the index's ~100
        // bytes per block stay near a tenth of the byte cap.
        let max_blocks = limits.max_files.saturating_add(limits.max_bytes / 1024);
        let blocks = BlockFile::open(&car, max_blocks).map_err(|e| match e {
            CarError::TooManyBlocks { .. } => Unpack::Content(UnixfsError::TooLarge(e.to_string())),
            CarError::Integrity { .. } => Unpack::Source(Miss::Integrity(e.to_string())),
            CarError::Unsupported(_) | CarError::Malformed(_) | CarError::Io(_) => {
                Unpack::Source(Miss::Failed(e.to_string()))
            }
        })?;
        let parts: Vec<&str> = path.iter().map(String::as_str).collect();
        unpack(&blocks, &root, &parts, &dest, &limits).map_err(|e| match e {
            UnixfsError::Missing { .. } | UnixfsError::Malformed(_) => {
                Unpack::Source(Miss::Failed(e.to_string()))
            }
            // A block changed on our disk after it was verified.
            UnixfsError::Io(ref io) if io.kind() == std::io::ErrorKind::InvalidData => {
                Unpack::Source(Miss::Integrity(e.to_string()))
            }
            other => Unpack::Content(other),
        })
    })
    .await
    .unwrap_or_else(|e| {
        Err(Unpack::Content(UnixfsError::Io(std::io::Error::other(
            format!("unpacking thread failed: {e}"),
        ))))
    })
}

/// The job's error for content that no gateway could make right.
fn content_error(e: UnixfsError, spec: &str, what: &str) -> Error {
    let message = format!("{what}: {spec}: {e}");
    match e {
        UnixfsError::NotFound { .. } => JobError::new(ErrorKind::InputUnavailable, message).into(),
        UnixfsError::TooLarge(_) => JobError::new(ErrorKind::InputTooLarge, message).into(),
        UnixfsError::BadName { .. } => JobError::new(ErrorKind::InputRefused, message).into(),
        UnixfsError::Unsupported(_) => JobError::new(ErrorKind::InputUnavailable, message).into(),
        UnixfsError::Io(_) => InfraError::Disk(message.into()).into(),
        UnixfsError::Missing { .. } | UnixfsError::Malformed(_) => {
            InfraError::Fetch(message.into()).into()
        }
    }
}

/// Every gateway failed: integrity if one sent forged blocks (the content
/// was there and someone tampered with it), unavailable if all said they
/// do not have it, else ours to retry.
fn give_up(misses: Vec<(String, Miss)>, spec: &str, what: &str) -> Error {
    let summary = |misses: &[(String, Miss)]| {
        misses
            .iter()
            .map(|(gateway, miss)| format!("{gateway}: {}", miss.message()))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let all = summary(&misses);
    if misses.iter().any(|(_, m)| matches!(m, Miss::Integrity(_))) {
        return JobError::new(
            ErrorKind::Integrity,
            format!("{what}: {spec}: no gateway sent content matching the CID, nothing was cached ({all})"),
        )
        .into();
    }
    if misses.iter().all(|(_, m)| matches!(m, Miss::NotFound(_))) {
        return JobError::new(
            ErrorKind::InputUnavailable,
            format!("{what}: {spec} was not found by any gateway ({all})"),
        )
        .into();
    }
    InfraError::Fetch(format!("{what}: {spec}: no gateway delivered ({all})").into()).into()
}

async fn remove(path: &Path) {
    let _ = tokio::fs::remove_file(path).await;
}

/// Removes whatever a failed attempt left at `dest`, file or folder.
async fn clear(dest: &Path) {
    if tokio::fs::remove_dir_all(dest).await.is_err() {
        let _ = tokio::fs::remove_file(dest).await;
    }
}
