//! `/metrics`: parsed with a Prometheus text-format parser; a scripted burst
//! moves each family by exactly what it did; no key or key id is a label.

use prometheus_parse::{Scrape, Value as Sample};
use serde_json::json;

use crate::support::TestApp;

pub(crate) async fn scrape(app: &TestApp) -> (String, Scrape) {
    let response = app.http.get(format!("{}/metrics", app.admin)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    let scrape = Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).unwrap();
    (text, scrape)
}

/// The value of the sample `name` whose labels include `labels`; histograms by their count.
pub(crate) fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Sample::Counter(v) | Sample::Gauge(v) | Sample::Untyped(v) => *v,
            Sample::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            Sample::Summary(_) => f64::NAN,
        })
        .collect();
    assert!(matching.len() <= 1, "{name} {labels:?} is ambiguous");
    matching.first().copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_parse_and_count_a_scripted_burst_exactly() {
    let app = TestApp::builder()
        .config("[limiter]\ndefault_plan = \"tiny\"\n[plans.tiny]\nlimits = [{ requests = 2, per = \"1m\" }]")
        .start()
        .await;
    let ws = app.workspace("Metrics").await;
    let (key_id, key) = app.key(&ws, json!({"name": "scraped"})).await;
    let (_, before) = scrape(&app).await;

    for _ in 0..3 {
        app.whoami(&key).await;
    }
    app.http.get(app.gateway_url("/v1/whoami")).send().await.unwrap();
    app.whoami("kg_live_garbage").await;
    app.http.get(app.gateway_url("/nowhere")).send().await.unwrap();

    let (text, after) = scrape(&app).await;
    let delta = |name: &str, labels: &[(&str, &str)]| value(&after, name, labels) - value(&before, name, labels);
    let requests = "keygate_requests_total";
    let whoami = ("route", "/v1/whoami");
    for (outcome, workspace, count) in [
        ("admitted", ws.as_str(), 2.0),
        ("RATE_LIMIT_EXCEEDED", ws.as_str(), 1.0),
        ("MISSING_API_KEY", "", 1.0),
        ("INVALID_API_KEY", "", 1.0),
    ] {
        assert_eq!(
            delta(requests, &[("outcome", outcome), whoami, ("workspace", workspace)]),
            count,
            "{outcome}\n{text}"
        );
    }
    assert_eq!(
        delta(
            requests,
            &[("outcome", "ROUTE_NOT_FOUND"), ("route", ""), ("workspace", "")]
        ),
        1.0
    );
    // Verify ran for the 3 valid requests and the malformed key, not for the missing one.
    assert_eq!(delta("keygate_verify_duration_seconds_count", &[]), 4.0, "{text}");
    assert_eq!(delta("keygate_cache_lookups_total", &[("result", "miss")]), 1.0);
    assert_eq!(delta("keygate_cache_lookups_total", &[("result", "hit")]), 2.0);
    assert_eq!(delta("keygate_limiter_duration_seconds_count", &[]), 3.0);
    // Timed, not only counted (by the time-stamp counter: metrics.rs
    // `Stopwatch`): more than nothing, and under a second each on average.
    for (histogram, observed) in [
        ("keygate_verify_duration_seconds_sum", 4.0),
        ("keygate_limiter_duration_seconds_sum", 3.0),
    ] {
        let took = delta(histogram, &[]);
        assert!(took > 0.0 && took < observed, "{histogram} {took}\n{text}");
    }
    assert_eq!(
        delta("keygate_store_duration_seconds_count", &[("operation", "find_key")]),
        1.0
    );
    assert_eq!(value(&after, "keygate_limiter_fallbacks_total", &[]), 0.0);
    for family in [
        "keygate_requests counter",
        "keygate_verify_duration_seconds histogram",
        "keygate_cache_lookups counter",
        "keygate_limiter_duration_seconds histogram",
        "keygate_limiter_fallbacks counter",
        "keygate_store_duration_seconds histogram",
        "keygate_store_errors counter",
        "keygate_webhook_attempts counter",
        "keygate_webhook_attempt_duration_seconds histogram",
    ] {
        assert!(text.contains(&format!("# TYPE {family}\n")), "{family}\n{text}");
    }
    assert!(!text.contains(&key_id), "no key id is a label");
    assert!(!text.contains(&key[key.len() - 20..]), "no key is a label");

    // A store that does not answer shows in the error counter.
    app.store.close().await;
    let unknown = keygate_core::KeyFormat::new("kg", &["live".into()])
        .unwrap()
        .generate("live", &mut rand::thread_rng())
        .unwrap();
    assert_eq!(app.whoami(unknown.expose()).await.status(), 503);
    let (_, down) = scrape(&app).await;
    assert_eq!(
        value(&down, "keygate_store_errors_total", &[("operation", "find_key")]),
        1.0
    );
}
