//! Timestamps on the wire: RFC 3339 in UTC with exactly six fractional digits
//! (`2026-11-28T09:30:00.000000Z`), so that the text sorts like the instant it names.
//! Internally times are microseconds since the Unix epoch (`i64`).

use std::fmt;

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::OffsetDateTime;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeError(String);

impl fmt::Display for TimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TimeError {}

/// Formats microseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn format_us(us: i64) -> String {
    let fmt =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| "invalid-time".to_string())
}

/// Parses any RFC 3339 timestamp (any offset, any precision) to UTC microseconds.
pub fn parse_rfc3339_us(s: &str) -> Result<i64, TimeError> {
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|e| {
        TimeError(format!(
            "'{s}' is not an RFC 3339 time (like 2026-11-28T09:30:00Z): {e}"
        ))
    })?;
    Ok((t.unix_timestamp_nanos() / 1_000) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_sorts() {
        let a = 1_795_000_000_123_456;
        let s = format_us(a);
        assert_eq!(s.len(), 27, "{s}");
        assert!(s.ends_with('Z'));
        assert_eq!(parse_rfc3339_us(&s).unwrap(), a);
        assert!(format_us(a) < format_us(a + 1));
    }

    #[test]
    fn parses_offsets_and_rejects_garbage() {
        let utc = parse_rfc3339_us("2026-11-28T10:00:00Z").unwrap();
        let plus = parse_rfc3339_us("2026-11-28T11:00:00+01:00").unwrap();
        assert_eq!(utc, plus);
        assert!(parse_rfc3339_us("yesterday").is_err());
        assert!(parse_rfc3339_us("2026-11-28").is_err());
    }
}
