//! Every object key Shoal writes, in one place. The store holds two trees:
//!
//! ```text
//! cache/sha256/<hex>                         content, named by its SHA-256
//! cache/url/<sha256 of the URL>.json         what a URL last held (its content's sha256, validators)
//! cache/cid/<cid>.car                        the CAR of a CID
//! cache/cid/<cid>/<sha256 of the path>.car   the CAR of a path inside a CID
//! cache/compiled/<engine>/<module sha256>    native code of a module, tagged
//! cache/tmp/<uuid>                           uploads not yet committed
//! results/<job id>/result.json               a job's result, written last
//! results/<job id>/stdout|stderr             streams above limits.inline_stream_bytes
//! results/<job id>/<mount>/<path>            a job's output files
//! health/readyz                              the readiness probe's object
//! ```
//!
//! `cache/` may be emptied at any time (everything in it is fetched or
//! compiled again); `results/` is the record of jobs (docs/PROTOCOL.md).
use object_store::path::Path as StorePath;
use sha2::{Digest, Sha256};

/// The whole cache: everything under it may be emptied at any time.
pub fn cache() -> StorePath {
    StorePath::from("cache")
}

/// Content with this SHA-256 (lowercase hex).
pub fn sha256(hex: &str) -> StorePath {
    StorePath::from(format!("cache/sha256/{hex}"))
}

/// The record of what `url` last held.
pub(crate) fn url_record(url: &str) -> StorePath {
    StorePath::from(format!("cache/url/{}.json", sha256_hex(url.as_bytes())))
}

/// The CAR of `cid`, or of the path `path` inside it (`/`-joined parts;
/// empty for the CID itself).
pub(crate) fn cid_car(cid: &str, path: &str) -> StorePath {
    if path.is_empty() {
        StorePath::from(format!("cache/cid/{cid}.car"))
    } else {
        let hash = sha256_hex(path.as_bytes());
        StorePath::from(format!("cache/cid/{cid}/{hash}.car"))
    }
}

/// The compiled artifact of module `sha256` for an engine with `fingerprint`.
pub fn compiled(fingerprint: &str, sha256: &[u8; 32]) -> StorePath {
    StorePath::from(format!(
        "cache/compiled/{fingerprint}/{}",
        hex::encode(sha256)
    ))
}

/// A fresh key for an upload that is committed elsewhere once complete.
pub(crate) fn temp() -> StorePath {
    StorePath::from(format!("cache/tmp/{}", uuid::Uuid::new_v4().simple()))
}

/// Everything a job left.
pub fn results(job_id: &str) -> StorePath {
    StorePath::from(format!("results/{job_id}"))
}

/// A job's result message.
pub fn result(job_id: &str) -> StorePath {
    StorePath::from(format!("results/{job_id}/result.json"))
}

/// A job's stream (`stdout` or `stderr`) when it is stored, not inline.
pub fn stream(job_id: &str, name: &str) -> StorePath {
    StorePath::from(format!("results/{job_id}/{name}"))
}

/// The prefix of an output mount's files, as results name it (ends in `/`).
pub fn output_prefix(job_id: &str, mount: &str) -> String {
    format!("results/{job_id}/{mount}/")
}

/// The object the readiness probe writes and reads back.
pub fn health() -> StorePath {
    StorePath::from("health/readyz")
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_in_their_trees() {
        assert_eq!(sha256("ab").as_ref(), "cache/sha256/ab");
        assert!(sha256("ab").prefix_matches(&cache()));
        assert!(url_record("https://x/").as_ref().starts_with("cache/url/"));
        assert_eq!(cid_car("bafy", "").as_ref(), "cache/cid/bafy.car");
        assert!(
            cid_car("bafy", "a/b")
                .as_ref()
                .starts_with("cache/cid/bafy/")
        );
        assert_eq!(result("j1").as_ref(), "results/j1/result.json");
        assert_eq!(stream("j1", "stdout").as_ref(), "results/j1/stdout");
        assert_eq!(output_prefix("j1", "outputs"), "results/j1/outputs/");
        assert!(result("j1").prefix_matches(&results("j1")));
    }
}
