//! Parsers for `submit`'s arguments. Each error says what to type instead.
use std::path::PathBuf;
use std::time::Duration;

/// An argument the user typed does not parse; the message says what to
/// type instead. `arg` is the argument as typed.
#[derive(Debug, thiserror::Error)]
pub enum ArgError {
    /// `-i ""`.
    #[error("empty --input; write -i FILE or -i FILE:/inputs/NAME")]
    EmptyInput,
    /// `-o` without `NAME:/PATH`.
    #[error("--output {arg:?}: write NAME:/GUEST/PATH, e.g. -o results:/results")]
    Output {
        /// As typed.
        arg: String,
    },
    /// `-e =VALUE`.
    #[error("--env {arg:?}: the name is empty; write -e NAME=VALUE")]
    EnvEmptyName {
        /// As typed.
        arg: String,
    },
    /// `-e` with a NUL byte, which no environment can hold.
    #[error("--env {arg:?}: contains a NUL byte")]
    EnvNul {
        /// As typed.
        arg: String,
    },
    /// `-e NAME` without `=`.
    #[error("--env {arg:?}: write -e NAME=VALUE (an empty value is -e NAME=)")]
    EnvNoValue {
        /// As typed.
        arg: String,
    },
    /// `--mount` without `HOST_DIR:/PATH`.
    #[error("--mount {arg:?}: write HOST_DIR:/GUEST/PATH, with :rw to allow writes")]
    Mount {
        /// As typed.
        arg: String,
    },
    /// A size whose number does not parse.
    #[error("{arg:?}: write a size such as 64MiB, 1GiB or 65536")]
    Size {
        /// As typed.
        arg: String,
        /// Why the number did not parse.
        #[source]
        source: std::num::ParseIntError,
    },
    /// A size with a unit we do not know.
    #[error("{arg:?}: unknown unit {unit:?}; use KiB, MiB or GiB")]
    SizeUnit {
        /// As typed.
        arg: String,
        /// The unit, lowercased.
        unit: String,
    },
    /// A size over `u64::MAX` bytes.
    #[error("{arg:?} is too large")]
    SizeTooLarge {
        /// As typed.
        arg: String,
    },
    /// A duration that does not parse.
    #[error("{arg:?}: write a duration such as 30s, 500ms or 2m")]
    Duration {
        /// As typed.
        arg: String,
        /// Why humantime refused it.
        #[source]
        source: humantime::DurationError,
    },
    /// Fuel that is not a positive number or `unlimited`.
    #[error("{arg:?}: write a positive number of fuel units, or 'unlimited'")]
    Fuel {
        /// As typed.
        arg: String,
    },
}

/// `-i/--input SRC[:GUEST_PATH]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    /// A local file or folder.
    pub source: String,
    /// Guest path under /inputs, when given.
    pub path: Option<String>,
}

/// Parses `SRC[:GUEST_PATH]`; the guest path is whatever follows the last
/// `:` when it starts with `/`, so `C:` style or URL colons stay in SRC.
pub fn input_spec(s: &str) -> Result<InputSpec, ArgError> {
    if s.is_empty() {
        return Err(ArgError::EmptyInput);
    }
    match s.rsplit_once(':') {
        Some((src, path))
            if path.starts_with('/')
                && !src.is_empty()
                && !src.ends_with(":/")
                && !path.starts_with("//") =>
        {
            Ok(InputSpec {
                source: src.to_owned(),
                path: Some(path.to_owned()),
            })
        }
        _ => Ok(InputSpec {
            source: s.to_owned(),
            path: None,
        }),
    }
}

/// `-o/--output NAME:GUEST_PATH`.
pub fn output_spec(s: &str) -> Result<(String, String), ArgError> {
    match s.split_once(':') {
        Some((name, path)) if !name.is_empty() && path.starts_with('/') => {
            Ok((name.to_owned(), path.to_owned()))
        }
        _ => Err(ArgError::Output { arg: s.to_owned() }),
    }
}

/// `-e/--env KEY=VALUE`.
pub fn env_pair(s: &str) -> Result<(String, String), ArgError> {
    let arg = || s.to_owned();
    match s.split_once('=') {
        Some(("", _)) => Err(ArgError::EnvEmptyName { arg: arg() }),
        Some((k, v)) if k.contains('\0') || v.contains('\0') => {
            Err(ArgError::EnvNul { arg: arg() })
        }
        Some((k, v)) => Ok((k.to_owned(), v.to_owned())),
        None => Err(ArgError::EnvNoValue { arg: arg() }),
    }
}

/// `--mount HOST_DIR:GUEST_PATH[:rw]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// Host folder.
    pub host: PathBuf,
    /// Guest path.
    pub guest: String,
    /// Writable (`:rw`); read-only otherwise.
    pub writable: bool,
}

/// Parses `HOST_DIR:GUEST_PATH[:rw|:ro]`.
pub fn mount_spec(s: &str) -> Result<MountSpec, ArgError> {
    let (rest, writable) = match s.rsplit_once(':') {
        Some((rest, "rw")) => (rest, true),
        Some((rest, "ro")) => (rest, false),
        _ => (s, false),
    };
    match rest.rsplit_once(':') {
        Some((host, guest)) if !host.is_empty() && guest.starts_with('/') => Ok(MountSpec {
            host: PathBuf::from(host),
            guest: guest.to_owned(),
            writable,
        }),
        _ => Err(ArgError::Mount { arg: s.to_owned() }),
    }
}

/// `--memory SIZE`: bytes, or with a unit (KiB, MiB, GiB, KB, MB, GB; K/M/G mean KiB/MiB/GiB).
pub fn size(s: &str) -> Result<u64, ArgError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|source| ArgError::Size {
        arg: s.to_owned(),
        source,
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => {
            return Err(ArgError::SizeUnit {
                arg: s.to_owned(),
                unit: other.to_owned(),
            });
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| ArgError::SizeTooLarge { arg: s.to_owned() })
}

/// `--timeout DURATION`: `30s`, `500ms`, `2m`, or plain seconds.
pub fn duration(s: &str) -> Result<Duration, ArgError> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|source| ArgError::Duration {
        arg: s.to_owned(),
        source,
    })
}

/// `--fuel N|unlimited`.
pub fn fuel(s: &str) -> Result<u64, ArgError> {
    if s.eq_ignore_ascii_case("unlimited") {
        return Ok(u64::MAX);
    }
    s.replace('_', "")
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ArgError::Fuel { arg: s.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs() {
        assert_eq!(
            input_spec("data.txt").unwrap(),
            InputSpec {
                source: "data.txt".into(),
                path: None
            }
        );
        assert_eq!(
            input_spec("dir/x.csv:/inputs/y.csv").unwrap(),
            InputSpec {
                source: "dir/x.csv".into(),
                path: Some("/inputs/y.csv".into())
            }
        );
        assert_eq!(input_spec("https://e.com/a").unwrap().path, None);
        assert_eq!(
            input_spec("https://e.com/a:/inputs/a").unwrap(),
            InputSpec {
                source: "https://e.com/a".into(),
                path: Some("/inputs/a".into())
            }
        );
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(size("64MiB").unwrap(), 64 << 20);
        assert_eq!(size("1g").unwrap(), 1 << 30);
        assert_eq!(size("65536").unwrap(), 65536);
        assert!(size("lots").unwrap_err().to_string().contains("64MiB"));
        assert_eq!(
            size("12XB").unwrap_err().to_string(),
            r#""12XB": unknown unit "xb"; use KiB, MiB or GiB"#
        );
        assert_eq!(
            size("99999999999G").unwrap_err().to_string(),
            r#""99999999999G" is too large"#
        );
        assert_eq!(duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(duration("soon").is_err());
        assert_eq!(fuel("unlimited").unwrap(), u64::MAX);
        assert_eq!(fuel("1_000").unwrap(), 1000);
        assert!(fuel("0").is_err());
    }

    #[test]
    fn env_output_mount() {
        assert_eq!(env_pair("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert_eq!(env_pair("A=").unwrap(), ("A".into(), "".into()));
        assert!(env_pair("=x").is_err());
        assert!(
            env_pair("A")
                .unwrap_err()
                .to_string()
                .contains("NAME=VALUE")
        );
        assert_eq!(
            output_spec("results:/results").unwrap(),
            ("results".into(), "/results".into())
        );
        assert!(output_spec("/results").is_err());
        assert_eq!(
            mount_spec("/tmp/x:/data:rw").unwrap(),
            MountSpec {
                host: "/tmp/x".into(),
                guest: "/data".into(),
                writable: true
            }
        );
        assert!(!mount_spec("/tmp/x:/data").unwrap().writable);
        assert!(mount_spec("/tmp/x").is_err());
    }
}
