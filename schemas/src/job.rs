//! The job message: what to run, with what, under which limits.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A request to run one WASI preview1 module (`shoal.job/v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobMessage {
    /// Always [`crate::JOB_SCHEMA`].
    pub schema: String,
    /// Client-chosen idempotency key. `None` asks the receiver to generate one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The module to run.
    pub module: Source,
    /// Exported function to call; `_start` by default.
    #[serde(default = "default_entrypoint")]
    pub entrypoint: String,
    /// Arguments after argv\[0\].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// The guest's whole environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Read-only data under `/inputs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<Input>,
    /// Writable mounts; `None` means the default single mount `outputs` at `/outputs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<OutputMount>>,
    /// Import modules, instantiated before the entry module under their names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub imports: Vec<ImportModule>,
    /// Per-job limits; absent fields take the worker's defaults.
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub limits: Limits,
}

/// A module whose exports the entry module may import as `name.field`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportModule {
    /// The import module name (not a WASI module name).
    pub name: String,
    /// Where its bytes come from.
    pub module: Source,
}

fn default_entrypoint() -> String {
    "_start".to_owned()
}

impl JobMessage {
    /// A job running `module` with everything else at its default.
    pub fn new(module: Source) -> Self {
        JobMessage {
            schema: crate::JOB_SCHEMA.to_owned(),
            id: None,
            module,
            entrypoint: default_entrypoint(),
            args: Vec::new(),
            env: BTreeMap::new(),
            inputs: Vec::new(),
            outputs: None,
            imports: Vec::new(),
            limits: Limits::default(),
        }
    }

    /// The output mounts in effect: the listed ones, or the default `outputs` at `/outputs`.
    pub fn output_mounts(&self) -> Vec<OutputMount> {
        match &self.outputs {
            Some(mounts) => mounts.clone(),
            None => vec![OutputMount {
                name: "outputs".into(),
                path: "/outputs".into(),
            }],
        }
    }
}

/// Where content comes from, plus how to name and lay it out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// The one place the bytes come from.
    #[serde(flatten)]
    pub location: Location,
    /// File name for argv\[0\] or the default input path; derived when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Layout of the content once staged; a single file by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpack: Option<Unpack>,
}

impl Source {
    /// A plain source with a derived name and file layout.
    pub fn new(location: Location) -> Self {
        Source {
            location,
            name: None,
            unpack: None,
        }
    }

    /// The name this source goes by: the given one, else one derived from the location.
    pub fn display_name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        match &self.location {
            Location::Sha256(hex) => hex.clone(),
            Location::Url(url) => {
                let path = url.split(['?', '#']).next().unwrap_or(url);
                let path = path.splitn(4, '/').nth(3).unwrap_or("");
                match path
                    .rsplit('/')
                    .find(|s| !s.is_empty() && *s != "." && *s != "..")
                {
                    Some(last) => last.to_owned(),
                    None => "download".to_owned(),
                }
            }
            Location::Cid(cid) => cid
                .rsplit('/')
                .find(|s| !s.is_empty())
                .unwrap_or(cid)
                .to_owned(),
            Location::S3(uri) => uri
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .filter(|s| !s.is_empty())
                .unwrap_or("object")
                .to_owned(),
            Location::Inline(_) => "inline".to_owned(),
        }
    }
}

/// Exactly one place content comes from. Serialized as a one-key object,
/// e.g. `{"sha256": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Location {
    /// Content already in the cache, by lowercase hex SHA-256.
    Sha256(String),
    /// An http(s) URL.
    Url(String),
    /// An IPFS CID, optionally with `/path/inside`.
    Cid(String),
    /// `s3://bucket/key` (or a prefix ending in `/`).
    S3(String),
    /// Base64 content carried in the message.
    Inline(String),
}

/// How staged content is laid out in the guest's file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unpack {
    /// The bytes are one file.
    File,
    /// The bytes are a tar archive, unpacked as a directory.
    Tar,
}

/// One read-only input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    /// Where the content comes from.
    pub source: Source,
    /// Guest path under `/inputs`; `/inputs/<name>` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl Input {
    /// The guest path in effect.
    pub fn guest_path(&self) -> String {
        match &self.path {
            Some(p) => p.clone(),
            None => format!("/inputs/{}", self.source.display_name()),
        }
    }
}

/// One writable mount whose files are kept after the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputMount {
    /// Folder name of the mount in the results.
    pub name: String,
    /// Absolute guest path.
    pub path: String,
}

/// Per-job limits. `None` takes the worker's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Wasmtime fuel units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Linear memory ceiling in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Wall-clock limit for the run, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Bytes of stdout kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stdout_bytes: Option<u64>,
    /// Bytes of stderr kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stderr_bytes: Option<u64>,
    /// Total bytes of output files kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
    /// Number of output files kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_files: Option<u64>,
}

impl Limits {
    /// True when every limit is left to the worker.
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}
