//! The key page's usage chart: stacked bars by outcome, drawn as inline SVG
//! on the server, so it needs no script and no network.

use std::fmt::Write;

use chrono::{DateTime, Duration, Utc};
use keygate_engine::admin::UsageBucket;

/// One bar: requests in one bucket, by the three outcomes people care about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bar {
    pub label: String,
    pub admitted: u64,
    pub rate_limited: u64,
    pub denied: u64,
}

impl Bar {
    pub fn total(&self) -> u64 {
        self.admitted + self.rate_limited + self.denied
    }
}

/// Outcomes that mean "over a limit"; every other error code is a denial.
fn is_rate_limited(outcome: &str) -> bool {
    matches!(outcome, "RATE_LIMIT_EXCEEDED" | "CONCURRENCY_LIMIT_EXCEEDED")
}

/// One bar per `step` from `start`, `count` bars, filled from the usage buckets
/// (which omit empty ones); `label` names a bar from its start.
pub fn bars(
    buckets: &[UsageBucket],
    start: DateTime<Utc>,
    step: Duration,
    count: usize,
    label: impl Fn(DateTime<Utc>) -> String,
) -> Vec<Bar> {
    let mut bars: Vec<Bar> = (0..count)
        .map(|i| Bar {
            label: label(start + step * i32::try_from(i).unwrap_or(i32::MAX)),
            ..Bar::default()
        })
        .collect();
    for bucket in buckets {
        let offset = (bucket.start - start).num_seconds();
        if offset < 0 || step.num_seconds() <= 0 {
            continue;
        }
        let Some(bar) = usize::try_from(offset / step.num_seconds())
            .ok()
            .and_then(|i| bars.get_mut(i))
        else {
            continue;
        };
        for (outcome, count) in &bucket.outcomes {
            if outcome == "admitted" {
                bar.admitted += count;
            } else if is_rate_limited(outcome) {
                bar.rate_limited += count;
            } else {
                bar.denied += count;
            }
        }
    }
    bars
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 180.0;
const AXIS: f64 = 22.0;
const LEFT: f64 = 44.0;

/// The chart as an `<svg>` element. Labels are generated from dates and
/// numbers only, never from anything a user typed.
pub fn stacked_svg(title: &str, bars: &[Bar], label_every: usize) -> String {
    let max = bars.iter().map(Bar::total).max().unwrap_or(0).max(1);
    let plot_height = HEIGHT - AXIS - 8.0;
    let slot = (WIDTH - LEFT) / bars.len().max(1) as f64;
    let bar_width = (slot * 0.7).max(1.0);
    let scale = |n: u64| n as f64 / max as f64 * plot_height;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{title}" xmlns="http://www.w3.org/2000/svg">"#
    );
    let _ = write!(svg, "<title>{title}</title>");
    let base = HEIGHT - AXIS;
    let _ = write!(
        svg,
        r#"<line class="axis" x1="{LEFT}" y1="{base}" x2="{WIDTH}" y2="{base}"/><text class="tick" x="{x}" y="{y}" text-anchor="end">{max}</text><text class="tick" x="{x}" y="{base}" text-anchor="end">0</text>"#,
        x = LEFT - 6.0,
        y = HEIGHT - AXIS - plot_height + 4.0,
    );
    for (i, bar) in bars.iter().enumerate() {
        let x = LEFT + slot * i as f64 + (slot - bar_width) / 2.0;
        let mut top = base;
        for (class, count) in [
            ("admitted", bar.admitted),
            ("rate-limited", bar.rate_limited),
            ("denied", bar.denied),
        ] {
            if count == 0 {
                continue;
            }
            let h = scale(count);
            top -= h;
            let _ = write!(
                svg,
                r#"<rect class="{class}" x="{x:.1}" y="{top:.1}" width="{bar_width:.1}" height="{h:.1}" data-count="{count}"><title>{label}: {count} {class}</title></rect>"#,
                label = bar.label
            );
        }
        if label_every > 0 && i % label_every == 0 {
            let _ = write!(
                svg,
                r#"<text class="tick" x="{cx:.1}" y="{ty}" text-anchor="middle">{label}</text>"#,
                cx = x + bar_width / 2.0,
                ty = HEIGHT - 6.0,
                label = bar.label
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn at(hour: i64) -> DateTime<Utc> {
        // 1_800_000_000 is a whole hour (500,000 hours after the epoch).
        DateTime::from_timestamp(1_800_000_000 + hour * 3600, 0).unwrap()
    }

    fn bucket(hour: i64, outcomes: &[(&str, u64)]) -> UsageBucket {
        UsageBucket {
            start: at(hour),
            outcomes: outcomes
                .iter()
                .map(|(o, n)| ((*o).to_owned(), *n))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn buckets_land_in_their_bar_and_outcomes_in_their_class() {
        let buckets = [
            bucket(0, &[("admitted", 5), ("RATE_LIMIT_EXCEEDED", 2)]),
            bucket(
                3,
                &[
                    ("INVALID_API_KEY", 1),
                    ("CONCURRENCY_LIMIT_EXCEEDED", 1),
                    ("API_KEY_REVOKED", 4),
                ],
            ),
            // Outside the range: ignored rather than misplaced.
            bucket(-1, &[("admitted", 100)]),
            bucket(4, &[("admitted", 100)]),
        ];
        let bars = bars(&buckets, at(0), Duration::hours(1), 4, |t| t.format("%H").to_string());
        assert_eq!(bars.len(), 4);
        assert_eq!((bars[0].admitted, bars[0].rate_limited, bars[0].denied), (5, 2, 0));
        assert_eq!(bars[1].total() + bars[2].total(), 0);
        assert_eq!((bars[3].admitted, bars[3].rate_limited, bars[3].denied), (0, 1, 5));
    }

    #[test]
    fn the_svg_draws_one_rect_per_non_empty_outcome_with_its_count() {
        let bars = vec![
            Bar {
                label: "a".into(),
                admitted: 3,
                rate_limited: 0,
                denied: 1,
            },
            Bar::default(),
        ];
        let svg = stacked_svg("Requests", &bars, 1);
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains(r#"class="admitted""#) && svg.contains(r#"data-count="3""#));
        assert!(svg.contains(r#"class="denied""#) && svg.contains(r#"data-count="1""#));
        assert!(!svg.contains("rate-limited\""));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }
}
