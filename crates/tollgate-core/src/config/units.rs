//! Human units in config: durations (`500ms`, `30s`, `5m`, `1h`, `7d`) and sizes (`512KiB`,
//! `10MiB`, `1GB`). Bare numbers are seconds and bytes.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 30s, 5m, 1h, 7d"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => return Err(format!("invalid duration unit {other:?} in {s:?}")),
    };
    checked_duration(secs)
        .ok_or_else(|| format!("duration {s:?} is out of range (at most 10 years)"))
}

/// The longest duration config accepts. Deadlines are computed as `now + duration`; bounding it
/// keeps that sum far from overflow.
pub const MAX_DURATION_SECS: f64 = 10.0 * 365.0 * 86400.0;

fn checked_duration(secs: f64) -> Option<Duration> {
    (secs.is_finite() && (0.0..=MAX_DURATION_SECS).contains(&secs))
        .then(|| Duration::from_secs_f64(secs))
}

pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    match s {
        s if s != 0 && s % 86400 == 0 => format!("{}d", s / 86400),
        s if s != 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s != 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 512KiB, 10MiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "KiB" => 1024,
        "MB" => 1000 * 1000,
        "MiB" => 1024 * 1024,
        "GB" => 1000 * 1000 * 1000,
        "GiB" => 1024 * 1024 * 1024,
        other => return Err(format!("invalid size unit {other:?} in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is out of range"))
}

pub fn format_size(n: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if n != 0 && n % MIB == 0 {
        format!("{}MiB", n / MIB)
    } else if n != 0 && n % 1024 == 0 {
        format!("{}KiB", n / 1024)
    } else {
        format!("{n}B")
    }
}

/// Accepts a string with a unit or a bare number.
#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    Num(f64),
    Str(String),
}

/// serde adapter for [`Duration`] fields.
pub mod duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let raw: Option<NumOrStr> = Option::deserialize(d)?;
        match raw {
            None => Ok(None),
            Some(NumOrStr::Num(n)) if checked_duration(n).is_some() => Ok(checked_duration(n)),
            Some(NumOrStr::Num(n)) => {
                Err(serde::de::Error::custom(format!("invalid duration {n}")))
            }
            Some(NumOrStr::Str(s)) => parse_duration(&s)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }
}

/// Serialises an optional [`Duration`] in the human form (pair with `skip_serializing_if`).
pub mod opt_duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }
}

/// serde adapter for byte-size fields.
pub mod size {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let raw: Option<NumOrStr> = Option::deserialize(d)?;
        match raw {
            None => Ok(None),
            Some(NumOrStr::Num(n)) if n.is_finite() && n >= 0.0 && n.fract() == 0.0 => {
                Ok(Some(n as u64))
            }
            Some(NumOrStr::Num(n)) => Err(serde::de::Error::custom(format!("invalid size {n}"))),
            Some(NumOrStr::Str(s)) => parse_size(&s).map(Some).map_err(serde::de::Error::custom),
        }
    }

    pub fn serialize<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_size(*n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        for (s, d) in [
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("2h", Duration::from_secs(7200)),
            ("7d", Duration::from_secs(7 * 86400)),
            ("15", Duration::from_secs(15)),
        ] {
            assert_eq!(parse_duration(s).unwrap(), d, "{s}");
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("99999999999d").is_err());
        #[derive(serde::Deserialize)]
        struct D {
            #[serde(default, with = "super::duration")]
            d: Option<Duration>,
        }
        assert!(
            serde_json::from_str::<D>(r#"{"d": 1e20}"#).is_err(),
            "no panic on huge numbers"
        );
        assert_eq!(
            serde_json::from_str::<D>(r#"{"d": 2}"#).unwrap().d,
            Some(Duration::from_secs(2))
        );
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10MiB").unwrap(), 10 * 1024 * 1024);
        assert_eq!(parse_size("1KB").unwrap(), 1000);
        assert_eq!(parse_size("77").unwrap(), 77);
        assert!(parse_size("99999999999999GiB").is_err());
        assert_eq!(format_size(4 * 1024 * 1024), "4MiB");
    }
}
