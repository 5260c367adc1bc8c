//! The guest path resolver: turns the paths a job names into clean,
//! non-overlapping mount points, or says which path is wrong and why.
//!
//! Everything here is lexical: a path is checked before anything touches the
//! disk, so a job can never name its way out of its mounts. (At run time
//! wasmtime-wasi's capability-based file system keeps the guest inside the
//! preopened directories, whatever `..` or symlinks it tries.)
use std::fmt;

/// The root under which every input lives, read-only.
pub const INPUTS_ROOT: &str = "/inputs";

/// A normalized absolute guest path: components without `.`, `..` or empties.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuestPath {
    components: Vec<String>,
}

/// Why a guest path was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError {
    /// The path as the job gave it.
    pub path: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "guest path {:?} {}", self.path, self.reason)
    }
}

impl std::error::Error for PathError {}

impl GuestPath {
    /// Parses an absolute guest path. Refuses relative paths, `.` and `..`
    /// components, NUL and backslashes (which some guests treat as separators).
    pub fn parse(path: &str) -> Result<GuestPath, PathError> {
        let err = |reason| PathError {
            path: path.to_owned(),
            reason,
        };
        if !path.starts_with('/') {
            return Err(err("is not absolute (it must start with '/')"));
        }
        if path.len() > 1024 {
            return Err(err("is longer than 1024 bytes"));
        }
        if path.contains('\0') {
            return Err(err("contains a NUL byte"));
        }
        if path.contains('\\') {
            return Err(err("contains a backslash"));
        }
        let mut components = Vec::new();
        for part in path.split('/') {
            match part {
                "" => continue,
                "." | ".." => return Err(err("contains a '.' or '..' component")),
                _ if part.len() > 255 => return Err(err("has a component longer than 255 bytes")),
                _ => components.push(part.to_owned()),
            }
        }
        Ok(GuestPath { components })
    }

    /// The path's components.
    pub fn components(&self) -> &[String] {
        &self.components
    }

    /// True for `/`.
    pub fn is_root(&self) -> bool {
        self.components.is_empty()
    }

    /// True when `self` is `other` or lies beneath it.
    pub fn starts_with(&self, other: &GuestPath) -> bool {
        self.components.starts_with(&other.components)
    }

    /// True when one path contains the other.
    pub fn overlaps(&self, other: &GuestPath) -> bool {
        self.starts_with(other) || other.starts_with(self)
    }

    /// The components below `base` (which `self` must start with).
    pub(crate) fn relative_to(&self, base: &GuestPath) -> Option<&[String]> {
        self.components.strip_prefix(base.components.as_slice())
    }

    /// The inputs root, `/inputs`.
    pub fn inputs_root() -> GuestPath {
        GuestPath {
            components: vec!["inputs".to_owned()],
        }
    }
}

impl fmt::Display for GuestPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.components.is_empty() {
            return f.write_str("/");
        }
        for c in &self.components {
            write!(f, "/{c}")?;
        }
        Ok(())
    }
}

/// Checks an input's path: under `/inputs`, the root itself only for directories.
pub fn input_path(path: &str) -> Result<GuestPath, PathError> {
    let parsed = GuestPath::parse(path)?;
    if !parsed.starts_with(&GuestPath::inputs_root()) {
        return Err(PathError {
            path: path.to_owned(),
            reason: "is outside /inputs, where inputs are mounted",
        });
    }
    Ok(parsed)
}

/// Checks an output mount's path: absolute, not `/`, clear of `/inputs`.
pub fn output_path(path: &str) -> Result<GuestPath, PathError> {
    let parsed = GuestPath::parse(path)?;
    if parsed.is_root() {
        return Err(PathError {
            path: path.to_owned(),
            reason: "is the root; mount outputs at a folder such as /outputs",
        });
    }
    if parsed.overlaps(&GuestPath::inputs_root()) {
        return Err(PathError {
            path: path.to_owned(),
            reason: "overlaps /inputs, which is read-only",
        });
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_redundant_slashes() {
        assert_eq!(
            GuestPath::parse("//inputs///a/").unwrap().to_string(),
            "/inputs/a"
        );
    }

    #[test]
    fn refuses_escapes_and_relative_paths() {
        for bad in [
            "/inputs/../etc",
            "inputs/a",
            "/inputs/./a",
            "",
            "/a\\b",
            "/a\0b",
            "..",
        ] {
            assert!(GuestPath::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn inputs_stay_under_inputs() {
        assert!(input_path("/inputs/data.txt").is_ok());
        assert!(input_path("/inputs").is_ok());
        assert!(input_path("/inputsx/a").is_err());
        assert!(input_path("/etc/passwd").is_err());
        assert!(input_path("/inputs/../../etc").is_err());
    }

    #[test]
    fn outputs_avoid_root_and_inputs() {
        assert!(output_path("/outputs").is_ok());
        assert!(output_path("/results/x").is_ok());
        assert!(output_path("/").is_err());
        assert!(output_path("/inputs/out").is_err());
        assert!(output_path("/inputs").is_err());
    }
}
