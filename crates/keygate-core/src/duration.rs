//! Durations as users write them: `90s`, `15m`, `24h`, `90d`.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a duration; use a number and a unit, like 90s, 15m, 24h or 90d")]
pub struct DurationError(pub String);

/// Parses a duration string. Plain numbers without a unit are refused because
/// `60` is ambiguous between seconds and minutes; only `0` needs no unit.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    if trimmed == "0" {
        return Ok(Duration::ZERO);
    }
    let has_unit = trimmed.chars().last().is_some_and(|c| c.is_ascii_alphabetic());
    if !has_unit {
        return Err(DurationError(text.to_owned()));
    }
    humantime::parse_duration(trimmed).map_err(|_| DurationError(text.to_owned()))
}

/// The shortest exact form: 86400s -> `1d`, 5400s -> `90m`.
pub fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs >= size && secs.is_multiple_of(size) {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_units() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("90d").unwrap(), Duration::from_secs(90 * 86_400));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["5x", "", "60", "-1m", "m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_shortest_exact_unit() {
        assert_eq!(format_duration(Duration::from_secs(86_400)), "1d");
        assert_eq!(format_duration(Duration::from_secs(5_400)), "90m");
        assert_eq!(format_duration(Duration::from_secs(61)), "61s");
    }
}
