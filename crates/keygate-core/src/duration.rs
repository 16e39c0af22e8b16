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

/// The longest a change may wait for its receipt.
pub const MAX_WAIT: Duration = Duration::from_secs(10);

/// A receipt's wait, exactly as [`crate::grammar::WAIT`] states it: `0`,
/// `1ms` to `9999ms`, or `1s` to `10s`; no leading zeros, no spaces.
pub fn parse_wait(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let (digits, unit) = match text.strip_suffix("ms") {
        Some(digits) => (digits, Duration::from_millis(1)),
        None => (text.strip_suffix('s')?, Duration::from_secs(1)),
    };
    let well_formed = !digits.is_empty() && digits.len() <= 4 && !digits.starts_with('0');
    if !well_formed || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let wait = unit * digits.parse::<u32>().ok()?;
    (wait <= MAX_WAIT).then_some(wait)
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
    fn a_wait_is_zero_milliseconds_or_seconds_up_to_ten() {
        for (text, millis) in [("0", 0), ("1ms", 1), ("9999ms", 9_999), ("1s", 1_000), ("10s", 10_000)] {
            assert_eq!(parse_wait(text), Some(Duration::from_millis(millis)), "{text}");
        }
        for text in [
            "", "11s", "10000ms", "01s", "0s", "0ms", "1m", "1.5s", " 1s", "1 s", "-1s", "s", "ms", "1h",
        ] {
            assert_eq!(parse_wait(text), None, "{text}");
        }
    }

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
