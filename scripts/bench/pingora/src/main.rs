//! Issue 16's engine bake-off, design 2: keygate's data plane as a Pingora
//! proxy. Everything but the gateway is keygate itself (`App::start`: the
//! store, the engine, the admin plane, usage flushes, events); the gateway's
//! listener is taken over by Pingora, whose request filter makes the same
//! decision keygate's gateway makes (crates/keygate-server/src/http/gateway.rs):
//! canonical path, route, credential, `Engine::verify` (scopes, limits,
//! usage), the error in the configured format, rate-limit headers, the
//! credential stripped and the identity and forwarding headers set.
//!
//! Run by scripts/bench/gateway.sh (`SIDE_BY_SIDE`) as `keygate-pingora
//! serve`, with `KEYGATE_CONFIG`, in place of `keygate serve`.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use keygate_core::path::canonicalize;
use keygate_core::error::ErrorInstance;
use keygate_core::{ErrorCatalog, ErrorCode};
use keygate_engine::metrics::{LabelText, RequestLabels};
use keygate_engine::usage::ADMITTED;
use keygate_engine::{CachedKey, Engine, RateLimits, SystemClock, VerifyRequest};
use keygate_server::config::{RateLimitHeaderStyle, Route, Settings};
use keygate_server::http::extract::{client_ip, credential, credential_rejection};
use keygate_server::http::ratelimit::add_headers;
use keygate_server::App;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{ProxyHttp, Session};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Gateway {
    engine: Arc<Engine>,
    catalog: ErrorCatalog,
    headers: RateLimitHeaderStyle,
    settings: Settings,
    /// One per route, in `settings.routes` order.
    routes: Vec<RouteState>,
}

struct RouteState {
    peer: SocketAddr,
    label: LabelText,
}

#[derive(Default)]
struct Ctx {
    route: Option<usize>,
    key: Option<Arc<CachedKey>>,
    limits: Option<RateLimits>,
    client: Option<IpAddr>,
    outcome: Option<&'static str>,
    request_id: Option<HeaderValue>,
}

impl Gateway {
    fn route_for(&self, method: &http::Method, path: &str) -> Option<usize> {
        self.settings
            .routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.methods.is_empty() || r.methods.contains(method))
            .filter(|(_, r)| {
                path.strip_prefix(r.path.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
            .max_by_key(|(_, r)| r.path.len())
            .map(|(i, _)| i)
    }

    fn route(&self, ctx: &Ctx) -> Option<&Route> {
        ctx.route.map(|i| &self.settings.routes[i])
    }

    /// Writes an error in the configured format, with the key's limits.
    async fn refuse(&self, session: &mut Session, ctx: &mut Ctx, error: &ErrorInstance) -> pingora_core::Result<bool> {
        let rendered = self.catalog.render(error);
        ctx.outcome = Some(error.code.as_str());
        let mut response = ResponseHeader::build(rendered.status, Some(6))?;
        response.insert_header(http::header::CONTENT_TYPE, rendered.content_type)?;
        response.insert_header(http::header::CONTENT_LENGTH, rendered.body.len())?;
        if let Some(challenge) = rendered.www_authenticate {
            response.insert_header(http::header::WWW_AUTHENTICATE, challenge)?;
        }
        self.finish_headers(&mut response, ctx)?;
        session.write_response_header(Box::new(response), false).await?;
        session.write_response_body(Some(Bytes::from(rendered.body)), true).await?;
        Ok(true)
    }

    /// Rate-limit headers and the request id, on every response.
    fn finish_headers(&self, response: &mut ResponseHeader, ctx: &Ctx) -> pingora_core::Result<()> {
        if let Some(limits) = &ctx.limits {
            let mut extra = HeaderMap::new();
            add_headers(&mut extra, limits, self.headers);
            for (name, value) in extra.iter() {
                response.append_header(name.clone(), value.clone())?;
            }
        }
        if let Some(id) = &ctx.request_id {
            response.insert_header("x-request-id", id.clone())?;
        }
        Ok(())
    }
}

fn new_request_id() -> HeaderValue {
    let mut id = [0u8; 4 + 26];
    id[..4].copy_from_slice(b"req_");
    let mut encoded = [0u8; 26];
    ulid::Ulid::new().array_to_str(&mut encoded);
    encoded.make_ascii_lowercase();
    id[4..].copy_from_slice(&encoded);
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("req_unknown"))
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora_core::Result<bool> {
        ctx.request_id = Some(new_request_id());
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let request = session.req_header();
        let canonical = match canonicalize(request.uri.path(), self.settings.path_rules) {
            Ok(Cow::Borrowed(_)) => None,
            Ok(Cow::Owned(path)) => Some(path),
            Err(_) => return self.refuse(session, ctx, &ErrorCode::InvalidPath.into()).await,
        };
        if let Some(path) = canonical {
            let target = match request.uri.query() {
                Some(query) => format!("{path}?{query}"),
                None => path,
            };
            match http::Uri::try_from(target) {
                Ok(uri) => session.req_header_mut().set_uri(uri),
                Err(_) => return self.refuse(session, ctx, &ErrorCode::InvalidPath.into()).await,
            }
        }
        let request = session.req_header();
        let client = client_ip(peer, &request.headers, &self.settings.trusted_proxies);
        ctx.client = Some(client);
        ctx.route = self.route_for(&request.method, request.uri.path());
        let Some(route) = self.route(ctx) else {
            return self.refuse(session, ctx, &ErrorCode::RouteNotFound.into()).await;
        };
        if !route.auth {
            return Ok(false);
        }
        let presented = match credential(&request.headers) {
            Ok(presented) => presented,
            Err(err) => {
                let error = credential_rejection(&self.engine, err, client);
                return self.refuse(session, ctx, &error).await;
            }
        };
        let verify = VerifyRequest {
            required_scopes: &route.scopes,
            resource: &route.resource,
            ..VerifyRequest::new(presented, Some(client))
        };
        let started = std::time::Instant::now();
        let verified = self.engine.verify(verify).await;
        self.engine.metrics().verify_took(started.elapsed());
        match verified {
            Ok(verified) => {
                ctx.key = Some(verified.key);
                ctx.limits = verified.limits;
                Ok(false)
            }
            Err(rejection) => {
                ctx.key = rejection.key;
                ctx.limits = rejection.limits;
                self.refuse(session, ctx, &rejection.error).await
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> pingora_core::Result<Box<HttpPeer>> {
        let peer = ctx.route.map_or(SocketAddr::from(([127, 0, 0, 1], 9)), |i| self.routes[i].peer);
        Ok(Box::new(HttpPeer::new(peer, false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> pingora_core::Result<()> {
        upstream.remove_header("x-api-key");
        let bearer = upstream
            .headers
            .get(http::header::AUTHORIZATION)
            .is_some_and(|v| v.as_bytes().get(..7).is_some_and(|s| s.eq_ignore_ascii_case(b"bearer ")));
        if bearer {
            upstream.remove_header(&http::header::AUTHORIZATION);
        }
        for name in ["x-keygate-key-id", "x-keygate-workspace-id", "x-keygate-environment"] {
            upstream.remove_header(name);
        }
        if let Some(cached) = &ctx.key {
            let key = &cached.key;
            upstream.insert_header("x-keygate-key-id", key.id.as_str())?;
            upstream.insert_header("x-keygate-workspace-id", key.workspace_id.as_str())?;
            upstream.insert_header("x-keygate-environment", key.environment.as_str())?;
        }
        if let Some(client) = ctx.client {
            upstream.insert_header("x-forwarded-for", client.to_string())?;
        }
        upstream.insert_header("x-forwarded-proto", "http")?;
        if let Some(id) = &ctx.request_id {
            upstream.insert_header("x-request-id", id.clone())?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora_core::Result<()> {
        self.finish_headers(response, ctx)
    }

    async fn logging(&self, _session: &mut Session, _e: Option<&pingora_core::Error>, ctx: &mut Ctx) {
        let route = ctx
            .route
            .map_or_else(|| LabelText(Arc::from("")), |i| self.routes[i].label.clone());
        self.engine.metrics().request(&RequestLabels {
            outcome: match ctx.outcome {
                Some(code) => code,
                None if ctx.key.is_some() => ADMITTED,
                None => "unauthenticated",
            },
            route,
            workspace: ctx
                .key
                .as_ref()
                .map_or_else(|| LabelText(Arc::from("")), |k| LabelText(k.workspace_id.clone())),
        });
    }
}

fn upstream_addr(uri: &http::Uri) -> SocketAddr {
    let host = uri.host().unwrap_or("127.0.0.1");
    let port = uri.port_u16().unwrap_or(80);
    format!("{host}:{port}")
        .parse()
        .unwrap_or_else(|_| panic!("the prototype needs an IP upstream, not {uri}"))
}

fn main() {
    let config = std::env::var_os("KEYGATE_CONFIG").map(std::path::PathBuf::from);
    let (_, mut settings) = keygate_server::config::load(config.as_deref()).unwrap_or_else(|e| panic!("config: {e}"));
    let gateway_addr = settings.gateway_addr;
    // keygate's own gateway listens where nobody sends anything.
    settings.gateway_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    settings.gateway_threads = 1;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let app = runtime.block_on(async {
        let store = keygate_store::open(&settings.store_url)
            .await
            .unwrap_or_else(|e| panic!("store: {e}"));
        App::start(settings.clone(), store, Arc::new(SystemClock))
            .await
            .unwrap_or_else(|e| panic!("start: {e}"))
    });
    let engine = app.engine.clone();
    // The control plane and the background work keep running on their runtime.
    std::thread::spawn(move || runtime.block_on(async move {
        let _app = app;
        std::future::pending::<()>().await
    }));

    let routes = settings
        .routes
        .iter()
        .map(|r| RouteState {
            peer: upstream_addr(&r.upstreams[0]),
            label: LabelText(Arc::from(r.path.as_str())),
        })
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // One current-thread runtime per thread: 16,696 req/s against 13,370
    // with Pingora's default work-stealing runtime, in one run here
    // (KEYGATE_PINGORA_WORK_STEALING=true brings it back). SIGTERM ends it
    // at once, as it ends `keygate serve` in the benchmarks.
    let work_stealing = std::env::var("KEYGATE_PINGORA_WORK_STEALING").is_ok_and(|v| v == "true");
    let conf = ServerConf {
        threads,
        work_stealing,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(
        &server.configuration,
        Gateway {
            engine,
            catalog: settings.errors.clone(),
            headers: settings.headers,
            routes,
            settings,
        },
    );
    proxy.add_tcp(&gateway_addr.to_string());
    server.add_service(proxy);
    server.run_forever();
}
