//! The job as the worker understands it: a validated message with every
//! default filled in, every path normalized and every limit resolved against
//! the worker's ceilings. Nothing is fetched here.
use crate::config::{LimitValues, LimitsSection};
use crate::error::JobError;
use crate::paths::{self, GuestPath};
use shoal_schemas::{JobMessage, Limits, Source};

/// A validated job.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    /// The id (given or generated).
    pub id: String,
    /// The module's source.
    pub module: Source,
    /// argv\[0\].
    pub argv0: String,
    /// Exported function to call.
    pub entrypoint: String,
    /// argv\[1..\].
    pub args: Vec<String>,
    /// The guest's environment.
    pub env: Vec<(String, String)>,
    /// Inputs with their resolved guest paths.
    pub inputs: Vec<JobInput>,
    /// Output mounts.
    pub outputs: Vec<JobOutput>,
    /// Import modules, by name, in the order they are instantiated.
    pub imports: Vec<(String, Source)>,
    /// Limits in effect.
    pub limits: LimitValues,
}

/// One input with its guest path.
#[derive(Debug, Clone)]
pub(crate) struct JobInput {
    /// Where it comes from.
    pub source: Source,
    /// Where it appears, under `/inputs`.
    pub path: GuestPath,
}

/// One output mount.
#[derive(Debug, Clone)]
pub(crate) struct JobOutput {
    /// Mount name.
    pub name: String,
    /// Guest path.
    pub path: GuestPath,
}

/// A message that is not a job: refused before anything is staged, never
/// retried (the same bytes would be refused again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The id the message names (its `id`, or the AMQP `message_id`), if
    /// any: the `rejected` result goes there.
    pub id: Option<String>,
    /// `too_large` or `invalid_job`: the dead letter's `x-shoal-reason`.
    pub reason: &'static str,
    /// What was wrong.
    pub error: JobError,
}

impl Job {
    /// A message's bytes as a job: within `limits.max_message_bytes`, valid
    /// against the schema, then [`resolve`](Job::resolve)d. `message_id`
    /// (the AMQP property) names the job when its body does not.
    pub(crate) fn admit(
        body: &[u8],
        message_id: Option<&str>,
        limits: &LimitsSection,
        ceiling: &LimitValues,
    ) -> Result<Job, Refusal> {
        let id_in = |body: &[u8]| message_id.map(str::to_owned).or_else(|| json_id(body));
        if body.len() as u64 > limits.max_message_bytes {
            return Err(Refusal {
                id: message_id.map(str::to_owned),
                reason: "too_large",
                error: JobError::invalid(format!(
                    "message is {} bytes, over limits.max_message_bytes ({})",
                    body.len(),
                    limits.max_message_bytes
                )),
            });
        }
        let mut msg = shoal_schemas::decode_job(body).map_err(|errors| Refusal {
            id: id_in(body),
            reason: "invalid_job",
            error: JobError::invalid(
                errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        })?;
        if msg.id.is_none() {
            msg.id = message_id.map(str::to_owned);
        }
        Job::resolve(msg, limits, ceiling).map_err(|error| Refusal {
            id: id_in(body),
            reason: "invalid_job",
            error,
        })
    }

    /// Checks what the JSON Schema cannot (paths, overlaps, ceilings) and
    /// fills in defaults. The message must already have passed the schema.
    pub(crate) fn resolve(
        msg: JobMessage,
        limits: &LimitsSection,
        ceiling: &LimitValues,
    ) -> Result<Job, JobError> {
        let id = msg
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        // The schema checks a body's `id`; an id taken from the AMQP
        // message_id must pass the same rule, since it names object keys
        // and routing keys.
        if !valid_id(&id) {
            return Err(JobError::invalid(format!(
                "/id: {id:?} is not a job id (letters, digits, '.', '_' and '-', at most 128, starting with a letter or digit)"
            )));
        }
        let mut inputs = Vec::with_capacity(msg.inputs.len());
        for (i, input) in msg.inputs.iter().enumerate() {
            let raw = input.guest_path();
            let path = paths::input_path(&raw)
                .map_err(|e| JobError::invalid(format!("/inputs/{i}/path: {e}")))?;
            // A tar archive, or a CID (Bacalhau mounts a CID at /inputs when
            // no path is given): a CID that turns out to be one file is
            // staged as /inputs/<its name>, since /inputs is a folder.
            let may_be_root = input.source.unpack == Some(shoal_schemas::Unpack::Tar)
                || matches!(input.source.location, shoal_schemas::Location::Cid(_));
            if path == GuestPath::inputs_root() && !may_be_root {
                return Err(JobError::invalid(format!(
                    "/inputs/{i}/path: only a directory (unpack \"tar\", or a CID) can be mounted at /inputs itself; give the file a name such as /inputs/data"
                )));
            }
            if let Some((j, other)) = inputs
                .iter()
                .enumerate()
                .find(|(_, o): &(usize, &JobInput)| o.path.overlaps(&path))
            {
                return Err(JobError::invalid(format!(
                    "/inputs/{i}/path: {path} overlaps input {j} at {}",
                    other.path
                )));
            }
            inputs.push(JobInput {
                source: input.source.clone(),
                path,
            });
        }
        let mut outputs: Vec<JobOutput> = Vec::new();
        for (i, mount) in msg.output_mounts().into_iter().enumerate() {
            let path = paths::output_path(&mount.path)
                .map_err(|e| JobError::invalid(format!("/outputs/{i}/path: {e}")))?;
            if let Some(other) = outputs.iter().find(|o| o.name == mount.name) {
                return Err(JobError::invalid(format!(
                    "/outputs/{i}/name: {:?} is used twice (also at {})",
                    mount.name, other.path
                )));
            }
            if let Some(other) = outputs.iter().find(|o| o.path.overlaps(&path)) {
                return Err(JobError::invalid(format!(
                    "/outputs/{i}/path: {path} overlaps output {:?} at {}",
                    other.name, other.path
                )));
            }
            outputs.push(JobOutput {
                name: mount.name,
                path,
            });
        }
        let limits = resolve_limits(&msg.limits, &limits.default, ceiling)?;
        let mut imports: Vec<(String, Source)> = Vec::with_capacity(msg.imports.len());
        for (i, import) in msg.imports.iter().enumerate() {
            if imports.iter().any(|(name, _)| *name == import.name) {
                return Err(JobError::invalid(format!(
                    "/imports/{i}/name: {:?} is listed twice",
                    import.name
                )));
            }
            imports.push((import.name.clone(), import.module.clone()));
        }
        Ok(Job {
            imports,
            id,
            argv0: msg.module.display_name(),
            module: msg.module,
            entrypoint: msg.entrypoint,
            args: msg.args,
            env: msg.env.into_iter().collect(),
            inputs,
            outputs,
            limits,
        })
    }
}

pub(crate) use crate::store::keys::valid_job_id as valid_id;

/// Fills absent limits from the defaults; refuses any above the ceiling, so
/// a job never runs with less than it asked for without knowing.
fn resolve_limits(
    asked: &Limits,
    default: &LimitValues,
    ceiling: &LimitValues,
) -> Result<LimitValues, JobError> {
    let pick = |name: &str, asked: Option<u64>, default: u64, ceiling: u64| match asked {
        Some(v) if v > ceiling => Err(JobError::invalid(format!(
            "/limits/{name}: {v} is above this worker's ceiling of {ceiling}"
        ))),
        Some(v) => Ok(v),
        None => Ok(default.min(ceiling)),
    };
    // WebAssembly's own bound, whatever the ceiling (local runs have none):
    // a 32-bit memory addresses at most 65,536 pages of 64 KiB.
    const WASM32_MAX_MEMORY: u64 = 1 << 32;
    if let Some(v) = asked.memory_bytes
        && v > WASM32_MAX_MEMORY
    {
        return Err(JobError::invalid(format!(
            "/limits/memory_bytes: {v} is above the {WASM32_MAX_MEMORY} bytes (65536 pages of 64 KiB) a 32-bit WebAssembly memory can address"
        )));
    }
    // A wall clock needs a bound too (local runs have no ceiling): a year.
    const MAX_TIMEOUT_MS: u64 = 365 * 24 * 3600 * 1000;
    if let Some(v) = asked.timeout_ms
        && v > MAX_TIMEOUT_MS
    {
        return Err(JobError::invalid(format!(
            "/limits/timeout_ms: {v} is above the most any worker allows, {MAX_TIMEOUT_MS} (a year)"
        )));
    }
    Ok(LimitValues {
        fuel: pick("fuel", asked.fuel, default.fuel, ceiling.fuel)?,
        memory_bytes: pick(
            "memory_bytes",
            asked.memory_bytes,
            default.memory_bytes,
            ceiling.memory_bytes,
        )?,
        timeout_ms: pick(
            "timeout_ms",
            asked.timeout_ms,
            default.timeout_ms,
            ceiling.timeout_ms,
        )?,
        max_stdout_bytes: pick(
            "max_stdout_bytes",
            asked.max_stdout_bytes,
            default.max_stdout_bytes,
            ceiling.max_stdout_bytes,
        )?,
        max_stderr_bytes: pick(
            "max_stderr_bytes",
            asked.max_stderr_bytes,
            default.max_stderr_bytes,
            ceiling.max_stderr_bytes,
        )?,
        max_output_bytes: pick(
            "max_output_bytes",
            asked.max_output_bytes,
            default.max_output_bytes,
            ceiling.max_output_bytes,
        )?,
        max_output_files: pick(
            "max_output_files",
            asked.max_output_files,
            default.max_output_files,
            ceiling.max_output_files,
        )?,
    })
}

/// The `id` of a message that is JSON but not a valid job, if it has one.
fn json_id(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("id")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_schemas::Location;

    /// An id from the AMQP message_id skips the schema; it must not name
    /// another job's keys or escape `results/`.
    #[test]
    fn ids_outside_the_schemas_pattern_are_refused() {
        let config = crate::Config::load_from(None, Vec::<(String, String)>::new()).unwrap();
        for bad in ["victim/out", "", "../x", "a b", ".hidden", &"x".repeat(129)] {
            let mut msg = JobMessage::new(Source::new(Location::Sha256("ab".repeat(32))));
            msg.id = Some(bad.to_owned());
            let err = Job::resolve(msg, &config.limits, &config.limits.ceiling).unwrap_err();
            assert!(err.message.starts_with("/id:"), "{bad:?}: {}", err.message);
        }
        let mut msg = JobMessage::new(Source::new(Location::Sha256("ab".repeat(32))));
        msg.id = Some("job-1.ok_2".into());
        assert!(Job::resolve(msg, &config.limits, &config.limits.ceiling).is_ok());
    }
}
