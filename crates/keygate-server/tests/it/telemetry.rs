//! OpenTelemetry (issue 21): a real OTLP/HTTP receiver decodes the protobuf
//! keygate exports and the tests read the spans in it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode, Span};
use parking_lot::Mutex;
use prost::Message;
use serde_json::{json, Value};

use crate::support::{echo_upstream, typo_of, TestApp};

/// An OTLP/HTTP receiver: every export's raw bytes, and its spans decoded.
struct Receiver {
    url: String,
    exports: Arc<Mutex<Vec<Bytes>>>,
}

impl Receiver {
    async fn start() -> Self {
        let exports: Arc<Mutex<Vec<Bytes>>> = Arc::default();
        let kept = exports.clone();
        let router = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| async move {
                assert_eq!(headers["content-type"], "application/x-protobuf");
                kept.lock().push(body);
                // An empty ExportTraceServiceResponse: full success.
                ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Self {
            url: format!("http://{addr}"),
            exports,
        }
    }

    /// Every span received so far, with its resource's `service.name`.
    fn spans(&self) -> Vec<(String, Span)> {
        let mut spans = Vec::new();
        for export in self.exports.lock().iter() {
            let request = ExportTraceServiceRequest::decode(export.clone()).expect("a protobuf export");
            for resource in request.resource_spans {
                let attributes = resource.resource.map(|r| r.attributes).unwrap_or_default();
                let service = string_of(&attributes, "service.name").unwrap_or_default();
                for scope in resource.scope_spans {
                    spans.extend(scope.spans.into_iter().map(|span| (service.clone(), span)));
                }
            }
        }
        spans
    }

    /// Waits (a few export intervals) until `count` spans have arrived.
    async fn wait_for(&self, count: usize) -> Vec<Span> {
        for _ in 0..100 {
            let spans = self.spans();
            if spans.len() >= count {
                return spans.into_iter().map(|(_, span)| span).collect();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{} spans arrived, {count} expected", self.spans().len());
    }

    fn raw(&self) -> Vec<u8> {
        self.exports.lock().iter().flat_map(|b| b.to_vec()).collect()
    }
}

fn string_of(attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue], name: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == name)
        .and_then(|kv| kv.value.as_ref()?.value.clone())
        .map(|value| match value {
            AnyValue::StringValue(s) => s,
            AnyValue::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

fn attribute(span: &Span, name: &str) -> Option<String> {
    string_of(&span.attributes, name)
}

fn span_with_path<'a>(spans: &'a [Span], path: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| attribute(s, "url.path").as_deref() == Some(path))
        .unwrap_or_else(|| panic!("no span for {path}"))
}

async fn traced_app(receiver: &Receiver, upstream: &str, extra: &str) -> TestApp {
    TestApp::builder()
        .config(&format!(
            "[telemetry]\notlp_endpoint = \"{}\"\nexport_interval = \"50ms\"\nservice_name = \"edge\"\n\
             [limiter]\ndefault_plan = \"standard\"\n\
             [plans.standard]\nlimits = [{{ requests = 100, per = \"1m\" }}]\n\
             [[routes]]\npath = \"/api\"\nupstream = \"{upstream}\"\nscopes = [\"read\"]\n\
             [[routes]]\npath = \"/open\"\nupstream = \"{upstream}\"\nauth = false\n{extra}",
            receiver.url
        ))
        .start()
        .await
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// A request with `key` that says it is part of trace [`TRACE_ID`].
async fn traced_get(app: &TestApp, path: &str, key: &str, tracestate: &str) -> reqwest::Response {
    app.http
        .get(app.gateway_url(path))
        .header("X-API-Key", key)
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
        .header("tracestate", tracestate)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn each_request_has_a_span_with_its_decision_that_continues_a_trusted_trace_and_never_holds_the_key() {
    let receiver = Receiver::start().await;
    let upstream = echo_upstream().await;
    let app = traced_app(&receiver, &upstream.url, "").await;
    let ws = app.workspace("Acme").await;
    let (key_id, key) = app.key(&ws, json!({"name": "k", "scopes": ["read"]})).await;

    // Admitted, from a trusted proxy (127.0.0.1 in TestApp) that started the trace.
    let admitted = traced_get(&app, "/api/items?token=hidden", &key, "vendor=abc").await;
    assert_eq!(admitted.status(), 200);
    let seen: Value = admitted.json().await.unwrap();
    // Refused: a wrong key, and no key on the same route.
    let wrong = typo_of(&key);
    let refused = app
        .http
        .get(app.gateway_url("/api/other"))
        .header("X-API-Key", &wrong)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let missing = app.http.get(app.gateway_url("/api/none")).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    // No route at all, and an open route.
    let nowhere = app.http.get(app.gateway_url("/nowhere")).send().await.unwrap();
    assert_eq!(nowhere.status(), 404);
    let open = app.http.get(app.gateway_url("/open/x")).send().await.unwrap();
    assert_eq!(open.status(), 200);

    let spans = receiver.wait_for(5).await;
    let span = span_with_path(&spans, "/api/items");
    assert_eq!(span.name, "GET /api");
    assert_eq!(span.kind, SpanKind::Server as i32);
    assert_eq!(
        hex::encode(&span.trace_id),
        TRACE_ID,
        "the trusted proxy's trace goes on"
    );
    assert_eq!(hex::encode(&span.parent_span_id), PARENT_ID);
    assert_eq!(attribute(span, "http.route").as_deref(), Some("/api"));
    assert_eq!(attribute(span, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(attribute(span, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attribute(span, "keygate.outcome").as_deref(), Some("admitted"));
    assert_eq!(attribute(span, "keygate.workspace_id"), Some(ws.clone()));
    assert_eq!(attribute(span, "keygate.key_id"), Some(key_id.clone()));
    assert_eq!(attribute(span, "keygate.ratelimit.limit").as_deref(), Some("100"));
    assert_eq!(attribute(span, "keygate.ratelimit.remaining").as_deref(), Some("99"));
    assert_eq!(attribute(span, "client.address").as_deref(), Some("127.0.0.1"));
    assert!(attribute(span, "keygate.request_id").is_some_and(|id| id.starts_with("req_")));

    // The upstream is a child of keygate's span, in the same trace, with the vendor's state kept.
    let headers = &seen["headers"];
    let expected = format!("00-{TRACE_ID}-{}-01", hex::encode(&span.span_id));
    assert_eq!(headers["traceparent"], expected.as_str());
    assert_eq!(headers["tracestate"], "vendor=abc");

    let refused = span_with_path(&spans, "/api/other");
    assert_eq!(
        attribute(refused, "keygate.outcome").as_deref(),
        Some("INVALID_API_KEY")
    );
    assert_eq!(attribute(refused, "http.response.status_code").as_deref(), Some("401"));
    assert_eq!(refused.parent_span_id.len(), 0, "a new trace starts here");
    // A refusal is the client's doing, not an error of keygate's.
    assert_ne!(refused.status.as_ref().map(|s| s.code), Some(StatusCode::Error as i32));
    let missing = span_with_path(&spans, "/api/none");
    assert_eq!(
        attribute(missing, "keygate.outcome").as_deref(),
        Some("MISSING_API_KEY")
    );
    assert_eq!(attribute(missing, "keygate.key_id"), None);
    let nowhere = span_with_path(&spans, "/nowhere");
    assert_eq!(nowhere.name, "GET", "no route, no route in the name");
    assert_eq!(attribute(nowhere, "http.route"), None);
    assert_eq!(
        attribute(nowhere, "keygate.outcome").as_deref(),
        Some("ROUTE_NOT_FOUND")
    );
    let open = span_with_path(&spans, "/open/x");
    assert_eq!(attribute(open, "keygate.outcome").as_deref(), Some("unauthenticated"));

    let services: Vec<String> = receiver.spans().into_iter().map(|(service, _)| service).collect();
    assert!(services.iter().all(|s| s == "edge"), "{services:?}");
    // Never the key, right or wrong, nor the query string.
    let raw = receiver.raw();
    for secret in [key.as_str(), wrong.as_str(), &key[8..], "hidden"] {
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} was exported"
        );
    }
}

#[tokio::test]
async fn an_untrusted_clients_traceparent_is_replaced_and_a_5xx_is_an_error_span() {
    let receiver = Receiver::start().await;
    let upstream = echo_upstream().await;
    // A closed port: the route's only target refuses connections.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let app = traced_app(
        &receiver,
        &upstream.url,
        &format!("[[routes]]\npath = \"/down\"\nupstream = \"{closed}\"\nauth = false\n[server]\ntrusted_proxies = [\"10.9.9.9\"]"),
    )
    .await;
    let ws = app.workspace("Acme").await;
    let (_, key) = app.key(&ws, json!({"name": "k", "scopes": ["read"]})).await;
    let response = traced_get(&app, "/api/items", &key, "planted=1").await;
    let seen: Value = response.json().await.unwrap();
    let down = app.http.get(app.gateway_url("/down/x")).send().await.unwrap();
    assert_eq!(down.status(), 502);

    let spans = receiver.wait_for(2).await;
    let span = span_with_path(&spans, "/api/items");
    assert_ne!(hex::encode(&span.trace_id), TRACE_ID, "a client cannot pick the trace");
    assert_eq!(span.parent_span_id.len(), 0);
    let headers = &seen["headers"];
    let forwarded = headers["traceparent"].as_str().unwrap();
    assert_eq!(
        forwarded,
        format!("00-{}-{}-01", hex::encode(&span.trace_id), hex::encode(&span.span_id))
    );
    assert!(
        headers.get("tracestate").is_none(),
        "the client's tracestate went on: {headers}"
    );
    let down = span_with_path(&spans, "/down/x");
    assert_eq!(
        attribute(down, "keygate.outcome").as_deref(),
        Some("UPSTREAM_UNAVAILABLE")
    );
    assert_eq!(down.status.as_ref().map(|s| s.code), Some(StatusCode::Error as i32));
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_traced_and_trace_headers_pass_through() {
    let upstream = echo_upstream().await;
    let app = TestApp::builder()
        .config(&format!(
            "[[routes]]\npath = \"/open\"\nupstream = \"{}\"\nauth = false\n[server]\ntrusted_proxies = [\"10.9.9.9\"]",
            upstream.url
        ))
        .start()
        .await;
    let traceparent = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    let response = app
        .http
        .get(app.gateway_url("/open/x"))
        .header("traceparent", &traceparent)
        .send()
        .await
        .unwrap();
    let seen: Value = response.json().await.unwrap();
    // Off, keygate is not in the trace: the header is the client's, untouched.
    assert_eq!(seen["headers"]["traceparent"], traceparent.as_str());
}

#[tokio::test]
async fn telemetry_settings_are_checked_when_the_config_is_read() {
    for (toml, says) in [
        ("otlp_endpoint = \"https://collector:4318\"", "only http://"),
        (
            "otlp_endpoint = \"http://c:4318\"\nsample_ratio = 1.5",
            "telemetry.sample_ratio",
        ),
        (
            "otlp_endpoint = \"http://c:4318\"\nservice_name = \" \"",
            "telemetry.service_name",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.toml");
        std::fs::write(&path, format!("[telemetry]\n{toml}\n")).unwrap();
        let Err(err) = keygate_server::ConfigSource::file(Some(path)).load() else {
            panic!("{toml}: accepted");
        };
        let err = err.to_string();
        assert!(err.contains(says), "{toml}: {err}");
    }
}

#[tokio::test]
async fn a_graceful_shutdown_sends_the_spans_still_queued() {
    let receiver = Receiver::start().await;
    let upstream = echo_upstream().await;
    let app = TestApp::builder()
        .config(&format!(
            "[telemetry]\notlp_endpoint = \"{}\"\nexport_interval = \"1h\"\n\
             [[routes]]\npath = \"/open\"\nupstream = \"{}\"\nauth = false",
            receiver.url, upstream.url
        ))
        .start()
        .await;
    let response = app.http.get(app.gateway_url("/open/x")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(receiver.spans().is_empty(), "sent before its interval");
    let _dir = app.stop().await;
    let spans = receiver.spans();
    assert_eq!(spans.len(), 1, "{spans:?}");
}
