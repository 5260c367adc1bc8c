//! `url` sources: http and https, size-capped, with bounded redirects,
//! guarded against server-side request forgery, and cached by URL.
//!
//! The guard: a job names a URL, but the worker makes the request from
//! inside the operator's network, so a job must not reach what only the
//! worker can reach. Every address a host name resolves to, on the first
//! request and on every redirect, must be public: loopback, private,
//! link-local (which holds the cloud metadata service at 169.254.169.254),
//! unique-local, shared (CGNAT), multicast and unspecified addresses are
//! refused unless `staging.url_allow` lists them. Names are resolved by our
//! own resolver inside the HTTP client, so the address checked is the
//! address connected to (no second lookup an attacker's DNS could answer
//! differently). IP literals never reach a resolver, so they are checked
//! before the request and in the redirect policy. No proxy is used.
//!
//! The cache: `cache/url/<sha256 of the URL>.json` records the content's
//! sha256 (the content itself lives at `cache/sha256/<hex>` like any other)
//! and the origin's validators. Every job asks the origin by default, with a
//! conditional request, so changed content is never served stale and a
//! `304 Not Modified` downloads no body. `staging.url_revalidate_secs` opens
//! a freshness window within which a hit makes no request at all.
use crate::config::{Cidr, StagingSection, parse_allow_list};
use crate::error::{Cause, Error, InfraError, JobError};
use crate::stage::SetupError;
use crate::store::{self, get_if_present, keys, put};
use object_store::{ObjectStore, ObjectStoreExt, path::Path as StorePath};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{CONTENT_LENGTH, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use serde::{Deserialize, Serialize};
use shoal_schemas::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Why an address is not for jobs, or `None` when it is public.
fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return non_public_v4(v4);
            }
            let seg = v6.segments();
            let first = seg[0];
            // IPv6 forms that carry an IPv4 address a gateway may translate
            // back: NAT64 (64:ff9b::/96 and 64:ff9b:1::/48), 6to4
            // (2002::/16), IPv4-compatible (::/96). Judged by that address.
            let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
            let nat64 = first == 0x64 && seg[1] == 0xff9b;
            if (nat64 && (seg[2..6] == [0, 0, 0, 0] || seg[2] == 1))
                || (seg[..6] == [0, 0, 0, 0, 0, 0] && !v6.is_loopback() && !v6.is_unspecified())
            {
                return non_public_v4(embedded(seg[6], seg[7]))
                    .map(|_| "an IPv6 form of a non-public IPv4 address");
            }
            if first == 0x2002 {
                return non_public_v4(embedded(seg[1], seg[2]))
                    .map(|_| "a 6to4 form of a non-public IPv4 address");
            }
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if first & 0xfe00 == 0xfc00 {
                Some("unique-local (private)")
            } else if v6.is_multicast() {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local (where cloud metadata services live)")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (carrier-grade NAT)")
    } else if a == 198 && (18..20).contains(&b) {
        Some("benchmarking (198.18.0.0/15)")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if ip.is_broadcast() || ip.is_multicast() || a >= 240 {
        Some("broadcast, multicast or reserved")
    } else {
        None
    }
}

/// The address policy: public addresses, plus what the operator allowed.
#[derive(Debug, Clone, Default)]
pub(super) struct AddressGuard {
    allow: Vec<Cidr>,
}

/// A request the guard refused: the job's fault, never retried.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Refused(String);

impl AddressGuard {
    /// A guard that also lets through these blocks.
    pub(super) fn new(allow: Vec<Cidr>) -> Self {
        AddressGuard { allow }
    }

    fn check(&self, host: &str, ip: IpAddr) -> Result<(), Refused> {
        match non_public(ip) {
            Some(why) if !self.allow.iter().any(|c| c.contains(ip)) => Err(Refused(format!(
                "{host} is {ip}, a {why} address; jobs may only fetch from public addresses (an operator can allow blocks with staging.url_allow)"
            ))),
            _ => Ok(()),
        }
    }

    /// Checks a URL before a request or redirect: its scheme, and its host
    /// when that is an address rather than a name.
    fn check_url(&self, url: &reqwest::Url) -> Result<(), Refused> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refused(format!(
                "{url}: only http and https URLs can be fetched"
            )));
        }
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check(&ip.to_string(), IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check(&format!("[{ip}]"), IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => Ok(()),
            None => Err(Refused(format!("{url}: no host"))),
        }
    }
}

/// Resolves names and refuses them if any address is not allowed: a name
/// with one public and one private address could otherwise connect to the
/// private one.
struct GuardedResolver(Arc<AddressGuard>);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for addr in &addrs {
                guard.check(&host, addr.ip())?;
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// What the cache knows about a URL.
#[derive(Debug, Serialize, Deserialize)]
struct UrlEntry {
    url: String,
    sha256: String,
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_modified: Option<String>,
    /// Seconds since the epoch when the origin last confirmed the content.
    checked_at: u64,
}

fn url_key(url: &str) -> StorePath {
    keys::url_record(url)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Fetches URL sources through the cache.
#[derive(Clone)]
pub(super) struct UrlFetcher {
    client: reqwest::Client,
    guard: Arc<AddressGuard>,
    revalidate_secs: u64,
}

impl UrlFetcher {
    /// A fetcher with the configured guard, redirect bound and timeouts.
    pub(super) fn new(staging: &StagingSection) -> Result<UrlFetcher, SetupError> {
        let allow = parse_allow_list(&staging.url_allow).map_err(SetupError::UrlAllow)?;
        let guard = Arc::new(AddressGuard::new(allow));
        let max_redirects = staging.url_max_redirects;
        let redirect_guard = guard.clone();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > max_redirects {
                let error = Refused(format!(
                    "more than {max_redirects} redirects (staging.url_max_redirects)"
                ));
                return attempt.error(error);
            }
            match redirect_guard.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        });
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(policy)
            .dns_resolver(Arc::new(GuardedResolver(guard.clone())))
            .connect_timeout(Duration::from_secs(staging.url_connect_timeout_secs))
            .read_timeout(Duration::from_secs(staging.url_read_timeout_secs))
            .user_agent(concat!("shoal-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(SetupError::UrlClient)?;
        Ok(UrlFetcher {
            client,
            guard,
            revalidate_secs: staging.url_revalidate_secs,
        })
    }

    /// Streams the content at `url` into the file `dest`: from the cache
    /// when the origin allows, else downloaded (at most `max` bytes) and
    /// cached. Returns its size.
    pub(super) async fn fetch_to(
        &self,
        store: &Arc<dyn ObjectStore>,
        url: &str,
        what: &str,
        max: u64,
        dest: &Path,
        uploads: &store::Uploads,
    ) -> Result<u64, Error> {
        let store_arc = store.clone();
        let store = store.as_ref();
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| JobError::invalid(format!("{what}: {url:?} is not a URL: {e}")))?;
        self.guard
            .check_url(&parsed)
            .map_err(|r| JobError::new(ErrorKind::InputRefused, format!("{what}: {r}")))?;
        let key = url_key(url);
        // A cached copy goes to `dest` first: it is the answer on a hit or a 304.
        let cached = self.cached(store, &key, dest).await?;
        if let Some(entry) = &cached
            && now_secs().saturating_sub(entry.checked_at) < self.revalidate_secs
        {
            tracing::debug!(url, sha256 = %entry.sha256, "url cache hit");
            crate::metrics::METRICS.cache_lookup("url", true);
            return Ok(entry.size);
        }

        let mut request = self.client.get(parsed);
        if let Some(entry) = &cached {
            if let Some(etag) = &entry.etag {
                request = request.header(IF_NONE_MATCH, etag);
            }
            if let Some(modified) = &entry.last_modified {
                request = request.header(IF_MODIFIED_SINCE, modified);
            }
        }
        let response = request
            .send()
            .await
            .map_err(|e| request_error(e, url, what))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_MODIFIED
            && let Some(mut entry) = cached
        {
            tracing::debug!(url, "url revalidated: not modified");
            crate::metrics::METRICS.cache_lookup("url", true);
            // The check time matters only to a freshness window; without
            // one, a 304 writes nothing to the store.
            if self.revalidate_secs > 0 {
                entry.checked_at = now_secs();
                self.record(store, &key, &entry).await?;
            }
            return Ok(entry.size);
        }
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(
                InfraError::Fetch(format!("{what}: {url} answered {status}").into()).into(),
            );
        }
        if !status.is_success() {
            return Err(JobError::new(
                ErrorKind::InputUnavailable,
                format!("{what}: {url} answered {status}"),
            )
            .into());
        }
        crate::metrics::METRICS.cache_lookup("url", false);
        let too_large = || {
            Error::from(JobError::new(
                ErrorKind::InputTooLarge,
                format!(
                    "{what}: {url} is larger than the {max} bytes allowed (limits.max_input_bytes)"
                ),
            ))
        };
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let (etag, last_modified) = (header(ETAG), header(LAST_MODIFIED));
        if let Some(len) = header(CONTENT_LENGTH).and_then(|l| l.parse::<u64>().ok())
            && len > max
        {
            return Err(too_large());
        }
        let mut response = response;
        // No hash on the way: the cache copy computes it, off the job's path.
        let mut sink = store::PlainFile::create(dest).await?;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| request_error(e, url, what))?
        {
            if sink.size() + chunk.len() as u64 > max {
                return Err(too_large());
            }
            sink.write(&chunk).await?;
        }
        let size = sink.finish().await?;
        let checked_at = now_secs();
        // Into the cache while the guest runs: the job has its input now.
        let url = url.to_owned();
        uploads
            .add(dest, move |copy| async move {
                let store = store_arc.as_ref();
                let (size, sha256) = store::cache_file(store, &copy).await?;
                let entry = UrlEntry {
                    url,
                    sha256,
                    size,
                    etag,
                    last_modified,
                    checked_at,
                };
                record(store, &key, &entry).await
            })
            .await?;
        Ok(size)
    }

    /// The cache entry, with its content written to `dest`, if both are
    /// there and agree.
    async fn cached(
        &self,
        store: &dyn ObjectStore,
        key: &StorePath,
        dest: &Path,
    ) -> Result<Option<UrlEntry>, InfraError> {
        let Some(entry) = get_if_present(store, key).await? else {
            return Ok(None);
        };
        let Ok(entry) = serde_json::from_slice::<UrlEntry>(&entry) else {
            return Ok(None);
        };
        let content_key = keys::sha256(&entry.sha256);
        let got = match store.get(&content_key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => {
                return Err(InfraError::Store(Cause::new(
                    format!("reading {content_key}"),
                    e,
                )));
            }
        };
        let (size, sha256) = store::write_object(got, content_key.as_ref(), dest).await?;
        // A corrupted entry is not trusted: fetch again from the origin.
        if sha256 != entry.sha256 || size != entry.size {
            tracing::warn!(key = %content_key, "cached url content does not match its hash; refetching");
            return Ok(None);
        }
        Ok(Some(entry))
    }

    async fn record(
        &self,
        store: &dyn ObjectStore,
        key: &StorePath,
        entry: &UrlEntry,
    ) -> Result<(), InfraError> {
        record(store, key, entry).await
    }
}

async fn record(
    store: &dyn ObjectStore,
    key: &StorePath,
    entry: &UrlEntry,
) -> Result<(), InfraError> {
    let body = serde_json::to_vec(entry)
        .map_err(|e| InfraError::Store(Cause::new("encoding a cache record", e)))?;
    put(store, key, body).await
}

/// A failed request: refused by the guard (the job's fault), or the origin
/// could not be reached (ours to retry: it may be back in a minute).
fn request_error(e: reqwest::Error, url: &str, what: &str) -> Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = source {
        if let Some(refused) = err.downcast_ref::<Refused>() {
            return JobError::new(ErrorKind::InputRefused, format!("{what}: {refused}")).into();
        }
        source = err.source();
    }
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(err) = source {
        message = format!("{message}: {err}");
        source = err.source();
    }
    InfraError::Fetch(Cause::new(format!("{what}: {url}"), message)).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_loopback_link_local_and_metadata_addresses_are_not_public() {
        for addr in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "224.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "2002:a00:1::",
            "::a00:1",
            "198.18.0.1",
        ] {
            assert!(non_public(ip(addr)).is_some(), "{addr}");
        }
        for addr in [
            "93.184.216.34",
            "2606:4700::1111",
            "8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::",
        ] {
            assert!(non_public(ip(addr)).is_none(), "{addr}");
        }
    }

    #[test]
    fn the_allow_list_opens_only_its_blocks() {
        let guard = AddressGuard::new(parse_allow_list("127.0.0.1/32, 10.0.0.0/8").unwrap());
        assert!(guard.check("h", ip("127.0.0.1")).is_ok());
        assert!(guard.check("h", ip("10.200.0.1")).is_ok());
        assert!(guard.check("h", ip("127.0.0.2")).is_err());
        assert!(guard.check("h", ip("192.168.0.1")).is_err());
        assert!(parse_allow_list("10.0.0.0/33").is_err());
        assert!(parse_allow_list("nonsense").is_err());
        assert_eq!(parse_allow_list("").unwrap(), vec![]);
    }

    #[test]
    fn bad_staging_settings_name_the_key_and_keep_the_cause() {
        use std::error::Error as _;
        let e = parse_allow_list("10.0.0.0/8, 10.0.0.0/33").unwrap_err();
        assert_eq!(
            e.to_string(),
            r#""10.0.0.0/33": the prefix must be 0 to 32"#
        );
        let config = crate::Config::load_from(None, std::iter::empty()).unwrap();
        let staging = StagingSection {
            url_allow: "nonsense".into(),
            ..config.staging.clone()
        };
        let Err(e) = UrlFetcher::new(&staging) else {
            panic!("a bad url_allow was accepted")
        };
        assert_eq!(
            e.to_string(),
            r#"staging.url_allow: "nonsense" is not an address or ADDRESS/PREFIX"#
        );
        let cidr = e.source().expect("the allow-list error is the source");
        assert!(cidr.source().is_some(), "the address parse error is kept");

        let mut config = config;
        config.staging.ipfs_gateways = "https://ok.example, not a url".into();
        let store = Arc::new(object_store::memory::InMemory::new());
        let Err(e) = crate::stage::Stager::new(store, &config) else {
            panic!("a bad gateway was accepted")
        };
        assert_eq!(
            e.to_string(),
            r#"staging.ipfs_gateways: "not a url" is not a URL: relative URL without a base"#
        );
        assert!(matches!(e, SetupError::Gateway { .. }) && e.source().is_some());
    }
}
