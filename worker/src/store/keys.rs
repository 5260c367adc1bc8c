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
//! health/create-only/<uuid>                  a worker's probe of create-only writes, deleted at once
//! jobs/by-time/<day>/<minute>/<µs>-<id>.json  a job as submitted (index; the numbers inverted)
//! jobs/by-time/<day>/<minute>/<µs>-<id>@<status>.json  the same job once it ended
//! jobs/by-id/<id>.json                       when a job was submitted (its by-time key)
//! cancel/<id>.json                           an operator's request to cancel a job
//! ```
//!
//! `cache/` may be emptied at any time (everything in it is fetched or
//! compiled again); `results/` is the record of jobs (docs/PROTOCOL.md);
//! `jobs/` indexes them by time, newest first, for `submit list`; `cancel/`
//! is what stops a job no worker holds yet.
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

/// Where workers probe whether the store honours create-only writes.
pub fn create_only_probes() -> StorePath {
    StorePath::from("health/create-only")
}

/// One such probe, a worker's own.
pub fn create_only_probe() -> StorePath {
    StorePath::from(format!(
        "{}/{}",
        create_only_probes(),
        uuid::Uuid::new_v4().simple()
    ))
}

/// The job index, by time (newest first) and by id.
pub fn jobs_by_time() -> StorePath {
    StorePath::from("jobs/by-time")
}

/// Inverted so that a plain ascending listing, which is all S3 offers,
/// gives the newest first: 6 digits of days since the epoch, 4 of the
/// minute in the day, 16 of microseconds since the epoch (enough until the
/// year 2286).
const DAYS_TOP: u64 = 999_999;
const MINUTES_TOP: u64 = 1439;
const MICROS_TOP: u64 = 9_999_999_999_999_999;
const MICROS_PER_MINUTE: u64 = 60_000_000;

/// The index folder of the day holding `submitted_us` (µs since the epoch).
pub fn jobs_day(submitted_us: u64) -> StorePath {
    let day = submitted_us / (1440 * MICROS_PER_MINUTE);
    StorePath::from(format!("jobs/by-time/{:06}", DAYS_TOP - day.min(DAYS_TOP)))
}

/// The index folder of the minute holding `submitted_us`: one folder a
/// minute keeps each listing short (a fleet finishing 100,000 jobs an hour
/// puts under 3,400 entries in one), one a day above them keeps the list of
/// minutes short.
pub fn jobs_minute(submitted_us: u64) -> StorePath {
    let minute = (submitted_us / MICROS_PER_MINUTE) % 1440;
    StorePath::from(format!(
        "{}/{:04}",
        jobs_day(submitted_us),
        MINUTES_TOP - minute
    ))
}

/// A job's entry in the by-time index: without a status as submitted, with
/// it once ended. The status follows an `@`, which no job id holds, so the
/// two sort side by side and neither can be mistaken for the other.
pub fn job_entry(submitted_us: u64, job_id: &str, status: Option<&str>) -> StorePath {
    let us = MICROS_TOP - submitted_us.min(MICROS_TOP);
    let ended = status.map(|s| format!("@{s}")).unwrap_or_default();
    StorePath::from(format!(
        "{}/{us:016}-{job_id}{ended}.json",
        jobs_minute(submitted_us)
    ))
}

/// What a by-time index key says: when, which job, and how it ended.
pub fn parse_job_entry(key: &str) -> Option<(u64, String, Option<String>)> {
    let name = key.rsplit('/').next()?.strip_suffix(".json")?;
    let (us, rest) = name.split_once('-')?;
    let us = MICROS_TOP.checked_sub(us.parse::<u64>().ok()?)?;
    let (id, status) = match rest.split_once('@') {
        Some((id, status)) => (id, Some(status.to_owned())),
        None => (rest, None),
    };
    Some((us, id.to_owned(), status))
}

/// When a job was submitted, by its id.
pub fn job_by_id(job_id: &str) -> StorePath {
    StorePath::from(format!("jobs/by-id/{job_id}.json"))
}

/// Every cancel request.
pub fn cancels() -> StorePath {
    StorePath::from("cancel")
}

/// An operator's request to cancel a job.
pub fn cancel(job_id: &str) -> StorePath {
    StorePath::from(format!("cancel/{job_id}.json"))
}

/// Ids that are safe as routing keys and object keys (the job schema's
/// pattern): what every key naming a job id may be given.
pub fn valid_job_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && id.as_bytes()[0].is_ascii_alphanumeric()
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

    #[test]
    fn the_job_index_sorts_newest_first_and_reads_back() {
        let older = job_entry(1_764_600_000_000_000, "a.b-c", None);
        let newer = job_entry(1_764_600_000_000_001, "a.b-c", Some("failed"));
        assert!(newer.as_ref() < older.as_ref(), "{newer} {older}");
        // A minute later sorts before, in a folder of its own; a day
        // later, in a day of its own.
        for later_us in [1_764_600_060_000_000, 1_764_686_400_000_000] {
            let later = job_entry(later_us, "z", None);
            assert!(later.as_ref() < newer.as_ref());
            assert!(later.prefix_matches(&jobs_minute(later_us)));
            assert!(!later.prefix_matches(&jobs_minute(1_764_600_000_000_001)));
            assert!(later.prefix_matches(&jobs_day(later_us)));
            assert!(later.prefix_matches(&jobs_by_time()));
        }
        // 2025-12-01T14:40:00Z: day 20423, minute 880 of the day.
        assert_eq!(
            older.as_ref(),
            "jobs/by-time/979576/0559/8235399999999999-a.b-c.json"
        );
        assert_eq!(
            parse_job_entry(newer.as_ref()),
            Some((1_764_600_000_000_001, "a.b-c".into(), Some("failed".into())))
        );
        assert_eq!(
            parse_job_entry(older.as_ref()),
            Some((1_764_600_000_000_000, "a.b-c".into(), None))
        );
        // The same job submitted and ended: side by side.
        let ended = job_entry(1_764_600_000_000_000, "a.b-c", Some("succeeded"));
        assert!(older.as_ref() < ended.as_ref());
        assert_eq!(parse_job_entry("jobs/by-time/x/nonsense"), None);
        assert_eq!(cancel("j1").as_ref(), "cancel/j1.json");
        assert!(cancel("j1").prefix_matches(&cancels()));
    }
}
