//! Routes with several targets (real nginx processes, killed and restarted
//! by the test): requests in turn, a dead target left out with no 5xx to
//! idempotent requests, readmitted when it is back, and a fast 502 when
//! every target is down.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::metrics::{scrape, value};
use crate::real_upstreams::nginx;
use crate::support::TestApp;

/// Which target answered: nginx says its name first.
async fn served_by(app: &TestApp, client: &reqwest::Client) -> (u16, String) {
    let response = client.get(app.gateway_url("/lb/item")).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, text.split(' ').next().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn targets_take_turns_a_dead_one_is_left_out_and_comes_back() {
    let Some(mut a) = nginx(&["a"]).await else { return };
    let Some(mut b) = nginx(&["b"]).await else { return };
    let app = TestApp::builder()
        .config(&format!(
            "[[routes]]\npath = \"/lb\"\nupstream = [\"{}\", \"{}\"]\nauth = false\neject_for = \"1s\"\nconnect_timeout = \"10s\"\n",
            a.url("a"),
            b.url("b")
        ))
        .start()
        .await;
    let client = reqwest::Client::new();

    // In turn.
    let mut names = Vec::new();
    for _ in 0..6 {
        let (status, name) = served_by(&app, &client).await;
        assert_eq!(status, 200);
        names.push(name);
    }
    assert!(names.windows(2).all(|w| w[0] != w[1]), "not in turn: {names:?}");

    // b dies in the middle of a run of requests from 4 clients at once:
    // after the 40th answer of 200.
    let answered = AtomicUsize::new(0);
    let run = |count: usize| {
        let (app, client, answered) = (&app, &client, &answered);
        async move {
            let mut seen = Vec::new();
            for _ in 0..count {
                seen.push(served_by(app, client).await);
                answered.fetch_add(1, Ordering::SeqCst);
            }
            seen
        }
    };
    let (seen, killed_at) = tokio::join!(
        async { futures::future::join_all((0..4).map(|_| run(50))).await.concat() },
        async {
            while answered.load(Ordering::SeqCst) < 40 {
                tokio::task::yield_now().await;
            }
            b.kill();
            answered.load(Ordering::SeqCst)
        }
    );
    assert!(killed_at < 150, "b was killed after the run ({killed_at} answers)");
    let failed: Vec<_> = seen.iter().filter(|(status, _)| *status != 200).collect();
    assert!(failed.is_empty(), "{} of 200 failed: {failed:?}", failed.len());
    // Left out, and /readyz says so.
    let (_, ready) = app.control_json("/readyz").await;
    assert_eq!(ready["routes"][0]["path"], "/lb");
    assert_eq!(
        (
            ready["routes"][0]["targets"].as_u64(),
            ready["routes"][0]["healthy"].as_u64()
        ),
        (Some(2), Some(1)),
        "{ready}"
    );
    // /metrics says the same, per target: b out after its failures, and
    // every one of the 206 answers counted on the target that gave it.
    let (_, scrape) = scrape(&app).await;
    let (a_target, b_target) = (a.url("a").replace("http://", ""), b.url("b").replace("http://", ""));
    let target = |name: &str, target: &str, result: Option<&str>| {
        let mut labels = vec![("route", "/lb"), ("target", target)];
        labels.extend(result.map(|result| ("result", result)));
        value(&scrape, name, &labels)
    };
    assert_eq!(target("keygate_upstream_target_up", &a_target, None), 1.0);
    assert_eq!(target("keygate_upstream_target_up", &b_target, None), 0.0);
    let answered = |t: &str| target("keygate_upstream_target_requests_total", t, Some("answered"));
    assert_eq!(answered(&a_target) + answered(&b_target), 206.0);
    assert!(answered(&b_target) >= 3.0, "b answered before it died");
    assert!(
        target("keygate_upstream_target_requests_total", &b_target, Some("failed")) >= 3.0,
        "b is out after eject_after (3) failures"
    );
    assert_eq!(
        target("keygate_upstream_target_requests_total", &a_target, Some("failed")),
        0.0
    );
    // a answers everything now.
    for _ in 0..10 {
        assert_eq!(served_by(&app, &client).await, (200, "a".to_owned()));
    }

    // b is back: after eject_for, one request tries it, and it takes turns again.
    b.restart().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut back = Vec::new();
    for _ in 0..6 {
        back.push(served_by(&app, &client).await);
    }
    assert!(back.iter().all(|(status, _)| *status == 200), "{back:?}");
    assert!(back.iter().any(|(_, name)| name == "b"), "b never came back: {back:?}");

    // Every target down: an immediate 502, not a wait for a timeout.
    a.kill();
    b.kill();
    for _ in 0..4 {
        let started = Instant::now();
        let response = client.get(app.gateway_url("/lb/item")).send().await.unwrap();
        assert_eq!(response.status(), 502);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["code"], "UPSTREAM_UNAVAILABLE");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "it waited for connect_timeout (10s)"
        );
    }
}

/// How many of the route's targets `/readyz` calls healthy, once it says
/// `want` (or after `within`, whatever it says then).
async fn healthy_within(app: &TestApp, want: u64, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let (_, ready) = app.control_json("/readyz").await;
        let healthy = ready["routes"][0]["healthy"].as_u64().unwrap();
        if healthy == want || Instant::now() > deadline {
            return healthy;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn active_health_checks_find_a_dead_target_and_its_return_without_traffic() {
    let Some(a) = nginx(&["a"]).await else { return };
    let Some(mut b) = nginx(&["b"]).await else { return };
    // eject_for is an hour: only the checks can bring b back within the test.
    let app = TestApp::builder()
        .config(&format!(
            "[[routes]]\npath = \"/lb\"\nupstream = [\"{}\", \"{}\"]\nauth = false\neject_for = \"1h\"\n\
             health_check = {{ path = \"/healthz\", interval = \"100ms\" }}\n",
            a.url("a"),
            b.url("b")
        ))
        .start()
        .await;
    let client = reqwest::Client::new();
    assert_eq!(healthy_within(&app, 2, Duration::from_secs(2)).await, 2);

    // b dies; no request is sent, yet the checks leave it out.
    b.kill();
    assert_eq!(healthy_within(&app, 1, Duration::from_secs(2)).await, 1);
    let (_, scrape) = scrape(&app).await;
    let b_target = b.url("b").replace("http://", "");
    let labels = [("route", "/lb"), ("target", b_target.as_str())];
    assert_eq!(value(&scrape, "keygate_upstream_target_up", &labels), 0.0);
    let answered = [("route", "/lb"), ("target", b_target.as_str()), ("result", "answered")];
    assert_eq!(
        value(&scrape, "keygate_upstream_target_requests_total", &answered),
        0.0,
        "checks are not requests"
    );
    // Requests go to a only, and none fails.
    for _ in 0..6 {
        assert_eq!(served_by(&app, &client).await, (200, "a".to_owned()));
    }

    // b is back: a check brings it in, long before eject_for.
    b.restart().await;
    assert_eq!(healthy_within(&app, 2, Duration::from_secs(3)).await, 2);
    let mut names = Vec::new();
    for _ in 0..6 {
        let (status, name) = served_by(&app, &client).await;
        assert_eq!(status, 200);
        names.push(name);
    }
    assert!(names.iter().any(|name| name == "b"), "b is in again: {names:?}");
}
