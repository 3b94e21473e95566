//! Wall-clock helpers. Stored times are unix seconds; the API shows RFC 3339.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in unix seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Now, in unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Unix seconds as RFC 3339 (`2026-11-23T22:05:00Z`).
pub fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

/// Parses RFC 3339 into unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// A point in time as operators write it, in unix milliseconds: RFC 3339
/// (`2026-11-01T00:00:00Z`), a UTC date (`2026-11-01`, its midnight), or a duration back
/// from now (`24h`, `7d`).
pub fn parse_instant(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Some(secs) = parse_rfc3339(s) {
        return Ok(secs.saturating_mul(1000));
    }
    if let Some(secs) = parse_rfc3339(&format!("{s}T00:00:00Z")) {
        return Ok(secs.saturating_mul(1000));
    }
    match crate::config::units::parse_duration(s) {
        Ok(d) => Ok(now_ms() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        Err(_) => Err(format!(
            "{s:?} is not a time: use RFC 3339 (2026-11-01T00:00:00Z), a date (2026-11-01) or a duration back from now (24h)"
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn instants() {
        assert_eq!(super::parse_instant("1970-01-02"), Ok(86_400_000));
        assert_eq!(super::parse_instant("1970-01-01T00:00:01Z"), Ok(1000));
        let ago = super::parse_instant("1h").unwrap();
        assert!((super::now_ms() - ago - 3_600_000).abs() < 5_000);
        assert!(super::parse_instant("soon").is_err());
    }

    #[test]
    fn round_trip() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::parse_rfc3339("1970-01-01T00:01:00Z"), Some(60));
        assert_eq!(super::parse_rfc3339("yesterday"), None);
    }
}
