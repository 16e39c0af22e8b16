//! The value types of the config file (issue 17): durations and sizes are
//! read by serde, so a bad value is refused while the file is read, with
//! its field and file named, and `validate` keeps only the checks that span
//! fields. Each writes itself back in a form it reads (a reload compares
//! configs through serde: crates/keygate-server/src/reload.rs).

use std::fmt;
use std::time::Duration;

use keygate_core::duration::parse_duration;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration as the config writes it: `90s`, `15m`, `50ms`, `24h`, `90d`,
/// or `0s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigDuration(Duration);

impl ConfigDuration {
    pub const fn secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    pub const fn millis(millis: u64) -> Self {
        Self(Duration::from_millis(millis))
    }

    pub const fn get(self) -> Duration {
        self.0
    }

    /// The same as a `chrono` duration, for times compared with timestamps.
    pub fn chrono(self) -> chrono::Duration {
        chrono::Duration::from_std(self.0).unwrap_or(chrono::Duration::MAX)
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `1h 30m` and `50ms` read back the same (humantime).
        humantime::format_duration(self.0).fmt(f)
    }
}

impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The longest duration a setting takes: far past any sensible lifetime,
/// and short enough that adding it to any time of day stays on the calendar
/// (a longer one would overflow where it is added to `now`).
const LONGEST: Duration = Duration::from_secs(100 * 365 * 86_400);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let duration = parse_duration(&text).map_err(D::Error::custom)?;
        if duration > LONGEST {
            return Err(D::Error::custom(format!("`{text}` is longer than 100 years")));
        }
        Ok(Self(duration))
    }
}

/// A [`ConfigDuration`] that must be more than zero: timeouts, intervals,
/// lifetimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct PositiveDuration(ConfigDuration);

impl PositiveDuration {
    /// `secs` must be positive; the defaults are.
    pub const fn secs(secs: u64) -> Self {
        Self(ConfigDuration::secs(secs))
    }

    pub const fn millis(millis: u64) -> Self {
        Self(ConfigDuration::millis(millis))
    }

    pub const fn get(self) -> Duration {
        self.0.get()
    }

    pub fn chrono(self) -> chrono::Duration {
        self.0.chrono()
    }
}

impl<'de> Deserialize<'de> for PositiveDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let duration = ConfigDuration::deserialize(deserializer)?;
        if duration.get().is_zero() {
            return Err(D::Error::custom(format!("`{duration}` must be positive")));
        }
        Ok(Self(duration))
    }
}

/// An interval of whole minutes, from one minute to an hour (`usage.rollup_every`):
/// the usage roll-up works on complete minutes, and an hour bounds the
/// minutes that reads add to the rollups (crates/keygate-store/src/sql/usage.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct WholeMinutes(ConfigDuration);

impl WholeMinutes {
    /// `minutes` must be from 1 to 60; the defaults are.
    pub const fn minutes(minutes: u64) -> Self {
        Self(ConfigDuration::secs(minutes * 60))
    }

    pub const fn get(self) -> Duration {
        self.0.get()
    }
}

impl<'de> Deserialize<'de> for WholeMinutes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let duration = ConfigDuration::deserialize(deserializer)?;
        let (secs, nanos) = (duration.get().as_secs(), duration.get().subsec_nanos());
        if nanos != 0 || secs % 60 != 0 || !(60..=3600).contains(&secs) {
            return Err(D::Error::custom(format!(
                "`{duration}` must be whole minutes, from 1m to 1h"
            )));
        }
        Ok(Self(duration))
    }
}

/// A size in bytes as the config writes it: `10MiB`, `1 GiB`, `512KB` or
/// plain bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigSize(u64);

impl ConfigSize {
    pub const fn kib(kib: u64) -> Self {
        Self(kib * 1024)
    }

    pub const fn mib(mib: u64) -> Self {
        Self(mib * 1024 * 1024)
    }

    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl Serialize for ConfigSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ConfigSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Bytes(u64),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Bytes(bytes) => Ok(Self(bytes)),
            Written::Text(text) => text
                .trim()
                .parse::<bytesize::ByteSize>()
                .map(|size| Self(size.as_u64()))
                .map_err(|_| D::Error::custom(format!("`{text}` is not a size like 10MiB or 1GiB"))),
        }
    }
}

/// Where an OTLP/HTTP collector listens (`telemetry.otlp_endpoint`): its
/// base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` names it; spans are posted to
/// `/v1/traces` under it. Plain `http` only: the exporter has no TLS, and
/// a collector is expected next to the node (docs/decisions.md,
/// "OpenTelemetry").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpEndpoint(url::Url);

impl OtlpEndpoint {
    /// The URL spans are posted to: `…/v1/traces`, unless the endpoint already names it.
    pub fn traces_url(&self) -> url::Url {
        if self.0.path().ends_with("/v1/traces") {
            return self.0.clone();
        }
        let mut url = self.0.clone();
        let path = format!("{}/v1/traces", self.0.path().trim_end_matches('/'));
        url.set_path(&path);
        url
    }
}

impl Serialize for OtlpEndpoint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for OtlpEndpoint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let url = url::Url::parse(&text).map_err(|e| D::Error::custom(format!("`{text}` is not a URL: {e}")))?;
        if url.scheme() != "http" {
            return Err(D::Error::custom(format!(
                "`{text}`: only http:// is supported; run the collector next to the node"
            )));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(D::Error::custom(format!("`{text}` must not have a query or fragment")));
        }
        Ok(Self(url))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Values {
        any: ConfigDuration,
        positive: PositiveDuration,
        size: ConfigSize,
    }

    #[derive(Debug, Deserialize)]
    struct Interval {
        every: WholeMinutes,
    }

    fn interval(text: &str) -> Result<Duration, String> {
        toml::from_str::<Interval>(&format!("every = {text:?}"))
            .map(|i| i.every.get())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_rollup_interval_is_whole_minutes_up_to_an_hour() {
        assert_eq!(interval("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(interval("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(interval("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["90s", "30s", "0s", "61m", "2h", "1m 500ms"] {
            let err = interval(bad).unwrap_err();
            assert!(err.contains("whole minutes, from 1m to 1h"), "{bad}: {err}");
        }
    }

    fn read(text: &str) -> Result<Values, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn values_are_read_from_their_written_forms() {
        let values = read("any = \"0s\"\npositive = \"50ms\"\nsize = \"10MiB\"").unwrap();
        assert_eq!(values.any.get(), Duration::ZERO);
        assert_eq!(values.positive.get(), Duration::from_millis(50));
        assert_eq!(values.size.bytes(), 10 * 1024 * 1024);
        assert_eq!(
            read("any = \"1s\"\npositive = \"1s\"\nsize = 4096")
                .unwrap()
                .size
                .bytes(),
            4096
        );
    }

    #[test]
    fn bad_values_are_refused_with_what_is_wrong() {
        let err = read("any = \"ninety\"\npositive = \"1s\"\nsize = 1").unwrap_err();
        assert!(err.contains("is not a duration") && err.contains("any"), "{err}");
        let err = read("any = \"1s\"\npositive = \"0s\"\nsize = 1").unwrap_err();
        assert!(err.contains("must be positive") && err.contains("positive"), "{err}");
        let err = read("any = \"1s\"\npositive = \"1s\"\nsize = \"lots\"").unwrap_err();
        assert!(err.contains("is not a size"), "{err}");
        assert!(
            read("any = \"90\"\npositive = \"1s\"\nsize = 1").is_err(),
            "a number needs a unit"
        );
        let err = read("any = \"1000000000d\"\npositive = \"1s\"\nsize = 1").unwrap_err();
        assert!(err.contains("longer than 100 years") && err.contains("any"), "{err}");
        assert!(read("any = \"36500d\"\npositive = \"1s\"\nsize = 1").is_ok());
    }

    #[test]
    fn an_otlp_endpoint_is_a_plain_http_base_url_and_names_its_traces_path() {
        #[derive(Debug, Deserialize)]
        struct Endpoint {
            url: OtlpEndpoint,
        }
        let traces = |text: &str| {
            toml::from_str::<Endpoint>(&format!("url = {text:?}"))
                .map(|e| e.url.traces_url().to_string())
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            traces("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces("http://collector:4318/otlp/").unwrap(),
            "http://collector:4318/otlp/v1/traces"
        );
        assert_eq!(
            traces("http://collector/v1/traces").unwrap(),
            "http://collector/v1/traces"
        );
        for (bad, says) in [
            ("https://collector:4318", "only http://"),
            ("collector:4318", "only http://"),
            ("not a url", "is not a URL"),
            ("http://collector:4318/?x=1", "query"),
        ] {
            let err = traces(bad).unwrap_err();
            assert!(err.contains(says) && err.contains("url"), "{bad}: {err}");
        }
    }

    proptest! {
        /// What is written back reads as the same values.
        #[test]
        fn written_values_read_back_the_same(millis in 0u64..10_000_000_000, positive in 1u64..10_000_000_000, size in any::<u64>()) {
            let values = Values {
                any: ConfigDuration::millis(millis),
                positive: PositiveDuration::millis(positive),
                size: ConfigSize(size >> 1),
            };
            let text = toml::to_string(&values).unwrap();
            prop_assert_eq!(read(&text).unwrap(), values);
        }
    }
}
