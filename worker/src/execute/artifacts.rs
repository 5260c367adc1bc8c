//! Compiled modules shared by the fleet: a module is compiled by the first
//! worker that runs it, and every other worker loads that native code from
//! the store instead of compiling (`cache/compiled/<engine fingerprint>/<module sha256>`).
//!
//! Loading native code is as trusting as running a binary, so every
//! artifact carries a tag over the engine fingerprint, the module's hash and
//! the payload: HMAC-SHA256 with `cache.compiled_key` when one is set (then
//! only holders of the key can plant code), else plain SHA-256 (which only
//! catches torn or corrupted objects: the bucket's write access is then the
//! trust boundary). An artifact with a wrong tag is ignored, logged and
//! compiled over; it is never an error of the job.
use bytes::{BufMut, Bytes, BytesMut};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, path::Path as StorePath};
use sha2::{Digest, Sha256};
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"SHOALCM1";
const TAG_LEN: usize = 32;

/// Reads and writes compiled-module artifacts.
#[derive(Clone)]
pub struct Artifacts {
    store: Arc<dyn ObjectStore>,
    key: Option<Arc<[u8]>>,
}

impl Artifacts {
    /// Artifacts in `store`, tagged with `key` (HMAC) or, when it is empty, SHA-256.
    pub fn new(store: Arc<dyn ObjectStore>, key: &str) -> Self {
        Artifacts {
            store,
            key: (!key.is_empty()).then(|| Arc::from(key.as_bytes())),
        }
    }

    /// The artifact of module `sha256` for an engine with `fingerprint`,
    /// when one is stored and its tag is right. Store errors count as a
    /// miss: compiling is always a correct fallback.
    pub async fn get(&self, fingerprint: &str, sha256: &[u8; 32]) -> Option<Bytes> {
        let key = artifact_key(fingerprint, sha256);
        let bytes = match crate::store::get_if_present(self.store.as_ref(), &key).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(%key, error = %e, "reading a compiled artifact; compiling instead");
                return None;
            }
        };
        let payload = self.open(fingerprint, sha256, &bytes);
        if payload.is_none() {
            tracing::warn!(%key, "compiled artifact has a wrong tag (corrupted, or written without this fleet's compiled_key); compiling instead");
        }
        payload
    }

    /// Stores a freshly compiled artifact. Best effort: a failure is logged,
    /// the job is not affected.
    pub async fn put(&self, fingerprint: &str, sha256: &[u8; 32], payload: &[u8]) {
        let key = artifact_key(fingerprint, sha256);
        let sealed = self.seal(fingerprint, sha256, payload);
        if let Err(e) = self.store.put(&key, PutPayload::from_bytes(sealed)).await {
            tracing::warn!(%key, error = %e, "storing a compiled artifact");
        }
    }

    fn tag(&self, fingerprint: &str, sha256: &[u8; 32], payload: &[u8]) -> [u8; TAG_LEN] {
        let parts: [&[u8]; 3] = [fingerprint.as_bytes(), sha256, payload];
        match &self.key {
            Some(key) => hmac_sha256(key, &parts),
            None => {
                let mut h = Sha256::new();
                parts.iter().for_each(|p| h.update(p));
                h.finalize().into()
            }
        }
    }

    fn seal(&self, fingerprint: &str, sha256: &[u8; 32], payload: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(MAGIC.len() + TAG_LEN + payload.len());
        out.put_slice(MAGIC);
        out.put_slice(&self.tag(fingerprint, sha256, payload));
        out.put_slice(payload);
        out.freeze()
    }

    fn open(&self, fingerprint: &str, sha256: &[u8; 32], sealed: &Bytes) -> Option<Bytes> {
        let header = MAGIC.len() + TAG_LEN;
        if sealed.len() < header || &sealed[..MAGIC.len()] != MAGIC {
            return None;
        }
        let payload = sealed.slice(header..);
        let expected = self.tag(fingerprint, sha256, &payload);
        // Constant time, so a tag cannot be guessed byte by byte.
        let diff = expected
            .iter()
            .zip(&sealed[MAGIC.len()..header])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (diff == 0).then_some(payload)
    }
}

/// Where the artifact of module `sha256` for an engine with `fingerprint` lives.
pub fn artifact_key(fingerprint: &str, sha256: &[u8; 32]) -> StorePath {
    crate::store::keys::compiled(fingerprint, sha256)
}

/// HMAC-SHA256 (RFC 2104) of the concatenated `parts`.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    parts.iter().for_each(|p| inner.update(p));
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let tag = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex::encode(tag),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_tag_from_another_key_or_a_changed_byte_is_refused() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let ours = Artifacts::new(store.clone(), "fleet secret");
        let theirs = Artifacts::new(store.clone(), "another secret");
        let unkeyed = Artifacts::new(store, "");
        let sha = [7u8; 32];
        let sealed = ours.seal("fp", &sha, b"native code");
        assert_eq!(
            ours.open("fp", &sha, &sealed).as_deref(),
            Some(&b"native code"[..])
        );
        assert_eq!(theirs.open("fp", &sha, &sealed), None);
        assert_eq!(unkeyed.open("fp", &sha, &sealed), None);
        assert_eq!(ours.open("other fp", &sha, &sealed), None);
        assert_eq!(ours.open("fp", &[8u8; 32], &sealed), None);
        let mut flipped = sealed.to_vec();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(ours.open("fp", &sha, &Bytes::from(flipped)), None);
        let plain = unkeyed.seal("fp", &sha, b"x");
        assert_eq!(unkeyed.open("fp", &sha, &plain).as_deref(), Some(&b"x"[..]));
        assert_eq!(ours.open("fp", &sha, &plain), None);
    }
}
