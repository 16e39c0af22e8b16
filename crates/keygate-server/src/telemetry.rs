//! OpenTelemetry traces of the data plane (`[telemetry]`, issue 21): one
//! server span per request, with keygate's decision on it, exported over
//! OTLP/HTTP by the SDK's batch thread.
//!
//! Each node holds its own tracer (not a global one, not a `tracing` layer):
//! two nodes in one process (the tests, an embedded engine) export apart,
//! the log filter's level does not decide what is traced, and with no
//! endpoint configured the data plane holds `None` and does nothing more
//! (docs/decisions.md, "OpenTelemetry").
//!
//! A span never carries a key: it names the key by its id, and the query
//! string (where a careless client may put one) is not recorded.

use std::net::IpAddr;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, Method};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

/// The W3C trace-context headers (https://www.w3.org/TR/trace-context/).
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// How long a shutdown waits for the last spans to be sent.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// `[telemetry]` once validated: present only when an endpoint is set.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    /// Where spans are posted: the collector's base URL and `/v1/traces`.
    pub traces_url: url::Url,
    pub service_name: String,
    /// The share of traces that start here which are recorded; a trusted
    /// proxy's decision is followed for the traces it started.
    pub sample_ratio: f64,
    /// How often the batch thread sends what it gathered.
    pub export_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("telemetry.otlp_endpoint: cannot start the OTLP exporter: {0}")]
pub struct TelemetryError(#[from] opentelemetry_otlp::ExporterBuildError);

/// A node's tracer and the batch thread behind it.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Telemetry {
    /// Starts the exporter's batch thread. `node` names this node
    /// (`service.instance.id`), so spans of several nodes stay apart.
    pub fn start(settings: &TelemetrySettings, node: &str) -> Result<Self, TelemetryError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(settings.traces_url.as_str())
            .with_timeout(Duration::from_secs(10))
            .build()?;
        let batches = BatchConfigBuilder::default()
            .with_scheduled_delay(settings.export_interval)
            .build();
        let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batches).build();
        let resource = Resource::builder()
            .with_service_name(settings.service_name.clone())
            .with_attributes([
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                KeyValue::new("service.instance.id", node.to_owned()),
            ])
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                settings.sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("keygate");
        Ok(Self { provider, tracer })
    }

    /// The span of a request that just arrived. Its trace continues the
    /// incoming `traceparent` only from a trusted proxy: anyone else could
    /// join their requests to a trace of their choosing.
    pub fn request(&self, headers: &HeaderMap, from_trusted_proxy: bool, method: &Method) -> RequestSpan {
        let parent = if from_trusted_proxy {
            TraceContextPropagator::new().extract(&HeaderExtractor(headers))
        } else {
            Context::new()
        };
        let span = self
            .tracer
            .span_builder(method.as_str().to_owned())
            .with_kind(SpanKind::Server)
            .with_attributes([KeyValue::new("http.request.method", method.as_str().to_owned())])
            .start_with_context(&self.tracer, &parent);
        RequestSpan {
            span,
            method: method.clone(),
        }
    }

    /// Sends what is still queued and stops the batch thread. It blocks.
    pub fn shutdown(&self) {
        if let Err(err) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %err, "the last spans may not have been exported");
        }
    }
}

/// One request's span, from its arrival to its response head.
pub struct RequestSpan {
    span: opentelemetry_sdk::trace::Span,
    method: Method,
}

/// What a request came to, for its span.
pub struct Finished<'a> {
    /// The matched route's path (`http.route`), if one matched.
    pub route: Option<&'a str>,
    pub status: u16,
    /// The error code the response stands for, `admitted`, or `unauthenticated` (an open route).
    pub outcome: &'a str,
    pub workspace_id: Option<&'a str>,
    pub key_id: Option<&'a str>,
    /// The limit the rate-limit headers describe, and what is left of it.
    pub limit: Option<Tightest>,
}

/// The limit closest to exhaustion, as the client's headers show it.
#[derive(Debug, Clone, Copy)]
pub struct Tightest {
    pub limit: u64,
    pub remaining: u64,
}

impl RequestSpan {
    /// The request's canonical path (never its query) and who sent it.
    pub fn arrived(&mut self, path: &str, client: IpAddr, request_id: &str) {
        self.span.set_attributes([
            KeyValue::new("url.path", path.to_owned()),
            KeyValue::new("client.address", client.to_string()),
            KeyValue::new("keygate.request_id", request_id.to_owned()),
        ]);
    }

    /// Replaces whatever trace context the client sent with this span's, so
    /// the upstream's spans are its children.
    pub fn propagate(&self, headers: &mut HeaderMap) {
        headers.remove(TRACEPARENT);
        headers.remove(TRACESTATE);
        let context = Context::new().with_remote_span_context(self.span.span_context().clone());
        TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
        // The propagator writes an empty `tracestate` for a trace without one.
        if headers.get(&TRACESTATE).is_some_and(|state| state.is_empty()) {
            headers.remove(TRACESTATE);
        }
    }

    /// Names the span after its route (`GET /api`), records the decision and ends it.
    pub fn finish(mut self, finished: &Finished<'_>) {
        if let Some(route) = finished.route {
            let route = if route.is_empty() { "/" } else { route };
            self.span.update_name(format!("{} {route}", self.method));
            self.span.set_attribute(KeyValue::new("http.route", route.to_owned()));
        }
        self.span.set_attributes([
            KeyValue::new("http.response.status_code", i64::from(finished.status)),
            KeyValue::new("keygate.outcome", finished.outcome.to_owned()),
        ]);
        let optional = [
            ("keygate.workspace_id", finished.workspace_id),
            ("keygate.key_id", finished.key_id),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                self.span.set_attribute(KeyValue::new(name, value.to_owned()));
            }
        }
        if let Some(limit) = finished.limit {
            self.span.set_attributes([
                KeyValue::new("keygate.ratelimit.limit", saturating_i64(limit.limit)),
                KeyValue::new("keygate.ratelimit.remaining", saturating_i64(limit.remaining)),
            ]);
        }
        // Server spans are errors only for 5xx: a 4xx is the client's, and a decision.
        if finished.status >= 500 {
            self.span.set_status(Status::error(finished.outcome.to_owned()));
        }
        self.span.end();
    }
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
