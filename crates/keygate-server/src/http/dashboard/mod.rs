//! The dashboard: server-rendered pages on the control plane under
//! `/dashboard`. Handlers translate forms and query strings into the same
//! engine operations the admin API uses, with the session's actor, so the
//! authorization and audit trail are the API's own.

mod alerts;
mod chart;
mod error;
pub mod session;
mod views;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::collections::HashMap;

use chrono::{DateTime, Duration, DurationRound, Utc};
use keygate_core::model::{ApiKey, KeyStatus, OnLeak, Workspace};
use keygate_core::role::Roles;
use keygate_engine::admin::{Granularity, KeyListPage, NewKey, NewWorkspace, WorkspacePatch};
use keygate_engine::sessions::{BrowserSecret, DashboardSession, Revealed};
use keygate_store::{AuditFilter, EventListFilter, KeyFilter, Page};
use serde::Deserialize;

use self::session::{browser_ip, cookie_value, over_https, set_cookie, tokens_match, Posted, SignedIn};
use self::views::*;
use crate::http::admin::AdminState;
pub use error::DashboardError;

pub const SIGN_IN_PATH: &str = "/dashboard/sign-in";
/// Followed by a portal link's token.
pub const PORTAL_PATH: &str = "/dashboard/portal/";

/// A path segment; one that does not decode (invalid UTF-8) names nothing: 404.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(Path), rejection(DashboardError))]
struct PathParam<T>(T);

/// Query parameters; ones that do not parse are a validation error on the page.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(Query), rejection(DashboardError))]
struct QueryParam<T>(T);

/// Keys, workspaces or audit events per page.
const PAGE_SIZE: u32 = 50;

/// What the dashboard needs beyond the admin API's state.
#[derive(Debug, Clone)]
pub struct DashboardContext {
    pub settings: crate::config::DashboardSettings,
    pub environments: Vec<String>,
}

pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/dashboard", get(home))
        .route("/dashboard/", get(home))
        .route("/dashboard/assets/{file}", get(asset))
        .route(SIGN_IN_PATH, get(sign_in_form).post(sign_in))
        .route("/dashboard/sign-out", post(sign_out))
        .route(&format!("{PORTAL_PATH}{{token}}"), get(portal_page).post(portal))
        .route("/dashboard/workspaces", get(workspaces).post(create_workspace))
        .route("/dashboard/workspaces/{id}", get(workspace).post(update_workspace))
        .route("/dashboard/workspaces/{id}/keys", get(keys).post(create_key))
        .route("/dashboard/workspaces/{id}/keys/new", get(new_key))
        .route("/dashboard/keys/{id}", get(key_page))
        .route("/dashboard/keys/{id}/revoke", post(revoke_key))
        .route("/dashboard/keys/{id}/rotate", post(rotate_key))
        .route("/dashboard/keys/{id}/delete", post(delete_key))
        .route("/dashboard/audit", get(audit))
        .route("/dashboard/nodes", get(nodes))
        .merge(alerts::routes())
}

type PageResult = Result<Response, DashboardError>;

/// An HTML response that no cache keeps: pages can show keys and CSRF tokens.
fn html(page: &impl Template) -> PageResult {
    let body = page.render().map_err(|err| {
        tracing::error!(error = %err, "dashboard template failed to render");
        DashboardError::Page(keygate_core::error::ErrorInstance::new(
            keygate_core::ErrorCode::InternalError,
        ))
    })?;
    Ok(with_page_headers(body.into_response(), "text/html; charset=utf-8"))
}

fn with_page_headers(mut response: Response, content_type: &'static str) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    response
}

/// The error page for a status, code and message (see `http::error`).
pub fn error_page(status: StatusCode, code: &str, message: &str) -> Response {
    let page = ErrorPage {
        layout: Layout::signed_out("Dashboard", "Error"),
        status: status.as_u16(),
        code: code.to_owned(),
        message: message.to_owned(),
    };
    let mut response = match page.render() {
        Ok(body) => with_page_headers(body.into_response(), "text/html; charset=utf-8"),
        Err(_) => (status, format!("{code}: {message}")).into_response(),
    };
    *response.status_mut() = status;
    response
}

/// 303 See Other: after a form post, the browser GETs the result, so a reload never posts twice.
pub fn redirect(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(location) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn redirect_with_cookie(to: &str, cookie: HeaderValue) -> Response {
    let mut response = redirect(to);
    response.headers_mut().append(header::SET_COOKIE, cookie);
    response
}

/// Where a session starts: operators see all workspaces, a portal session its own keys.
fn home_of(session: &DashboardSession) -> String {
    match session.workspace() {
        Some(ws) => format!("/dashboard/workspaces/{ws}/keys"),
        None => "/dashboard/workspaces".into(),
    }
}

/// Operator-only pages are simply not there for a portal session.
fn require_operator(session: &DashboardSession) -> Result<(), DashboardError> {
    if session.is_operator() {
        Ok(())
    } else {
        Err(DashboardError::not_found())
    }
}

async fn home(signed_in: Result<SignedIn, DashboardError>) -> Response {
    match signed_in {
        Ok(signed_in) => redirect(&home_of(&signed_in.session)),
        Err(_) => redirect(SIGN_IN_PATH),
    }
}

async fn asset(PathParam(file): PathParam<String>) -> Response {
    let (body, content_type) = match file.as_str() {
        "app.css" => (include_str!("../../../assets/app.css"), "text/css; charset=utf-8"),
        "app.js" => (include_str!("../../../assets/app.js"), "text/javascript; charset=utf-8"),
        _ => return DashboardError::not_found().into_response(),
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

// ----- signing in and out -----

/// The sign-in form carries a token that must match a cookie set with it
/// (double submit), so another site cannot sign a browser in to its own account.
async fn sign_in_form(parts: Parts, State(state): State<AdminState>) -> PageResult {
    sign_in_page(&parts, &state, None, StatusCode::OK)
}

fn sign_in_page(parts: &Parts, state: &AdminState, error: Option<String>, status: StatusCode) -> PageResult {
    let token = keygate_engine::sessions::random_token();
    let mut response = html(&SignInPage {
        layout: Layout::signed_out(&state.dashboard.settings.product_name, "Sign in"),
        csrf: token.clone(),
        error,
    })?;
    *response.status_mut() = status;
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(session::SIGN_IN_COOKIE, &token, over_https(parts, state), None),
    );
    Ok(response)
}

/// A form posted before a session exists carries the token of the cookie set
/// with the form (double submit).
fn check_double_submit(parts: &Parts, csrf: &str) -> Result<(), DashboardError> {
    let expected = cookie_value(&parts.headers, session::SIGN_IN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !tokens_match(csrf, &expected) {
        return Err(DashboardError::CsrfRejected);
    }
    Ok(())
}

#[derive(Deserialize)]
struct SignInForm {
    key: String,
    csrf: String,
}

async fn sign_in(State(state): State<AdminState>, parts: Parts, body: axum::body::Bytes) -> PageResult {
    let form: SignInForm = serde_urlencoded::from_bytes(&body).map_err(|e| DashboardError::bad_form(e.to_string()))?;
    check_double_submit(&parts, &form.csrf)?;
    let ip = browser_ip(&parts, &state);
    match state.engine.sessions().sign_in(form.key.trim(), ip).await {
        Ok((secret, session)) => {
            tracing::info!(target: "keygate::dashboard", session = %session.id, actor = %session.actor.id, "signed in");
            Ok(redirect_with_cookie(
                &home_of(&session),
                set_cookie(
                    session::SESSION_COOKIE,
                    secret.expose(),
                    over_https(&parts, &state),
                    None,
                ),
            ))
        }
        Err(rejection) => {
            let error = crate::http::error::ApiError::from(rejection);
            let text = format!("{} ({})", error.message(), error.0.code.as_str());
            sign_in_page(&parts, &state, Some(text), StatusCode::UNAUTHORIZED)
        }
    }
}

#[derive(Deserialize)]
struct Empty {}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

/// Ends the session on every node (a store that does not answer gets the
/// error page, and the session stays until the next try).
async fn sign_out(State(state): State<AdminState>, posted: Posted<Empty>) -> PageResult {
    state.engine.sessions().sign_out(&posted.signed_in.secret).await?;
    Ok(redirect_with_cookie(
        SIGN_IN_PATH,
        set_cookie(session::SESSION_COOKIE, "", posted.signed_in.secure, Some(0)),
    ))
}

/// `GET` a portal link: a page with one button, and the double-submit token
/// its form needs (as the sign-in form has). Nothing is redeemed.
async fn portal_page(State(state): State<AdminState>, PathParam(token): PathParam<String>, parts: Parts) -> PageResult {
    let csrf = keygate_engine::sessions::random_token();
    let mut response = html(&PortalPage {
        layout: Layout::signed_out(&state.dashboard.settings.product_name, "Your API keys"),
        csrf: csrf.clone(),
        action: format!("{PORTAL_PATH}{token}"),
    })?;
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(session::SIGN_IN_COOKIE, &csrf, over_https(&parts, &state), None),
    );
    Ok(response)
}

/// `POST` a portal link (its page's button): redeems it once. The form's
/// token must match its cookie, so another site cannot sign a browser in to
/// a workspace of the other site's choosing.
async fn portal(
    State(state): State<AdminState>,
    PathParam(token): PathParam<String>,
    parts: Parts,
    body: axum::body::Bytes,
) -> PageResult {
    let form: CsrfForm = serde_urlencoded::from_bytes(&body).map_err(|e| DashboardError::bad_form(e.to_string()))?;
    check_double_submit(&parts, &form.csrf)?;
    let ip = browser_ip(&parts, &state);
    let token = BrowserSecret::from_presented(&token);
    let Some((secret, session)) = state.engine.sessions().redeem_portal_link(&token, ip).await? else {
        return Err(DashboardError::Page(
            keygate_core::error::ErrorInstance::new(keygate_core::ErrorCode::NotFound)
                .with_message("This link has expired or was already used. Ask for a new one."),
        ));
    };
    tracing::info!(target: "keygate::dashboard", session = %session.id, workspace = ?session.workspace(), "portal link redeemed");
    Ok(redirect_with_cookie(
        &home_of(&session),
        set_cookie(
            session::SESSION_COOKIE,
            secret.expose(),
            over_https(&parts, &state),
            None,
        ),
    ))
}

// ----- workspaces (operators) -----

#[derive(Deserialize)]
struct CursorQuery {
    cursor: Option<String>,
}

async fn workspaces(
    State(state): State<AdminState>,
    signed_in: SignedIn,
    QueryParam(query): QueryParam<CursorQuery>,
) -> PageResult {
    let session = &signed_in.session;
    require_operator(session)?;
    let page = Page {
        limit: PAGE_SIZE,
        cursor: query.cursor,
    };
    let listed = state.engine.admin().list_workspaces(&session.actor, &page).await?;
    html(&WorkspacesPage {
        layout: Layout::signed_in(
            &state.dashboard.settings.product_name,
            "Workspaces",
            session,
            None,
            "workspaces",
        ),
        rows: listed
            .items
            .iter()
            .filter(|ws| !ws.is_admin())
            .map(WorkspaceRow::of)
            .collect(),
        plans: state.plan_names(),
        next_cursor: listed.next_cursor,
    })
}

#[derive(Deserialize)]
struct WorkspaceForm {
    name: String,
    #[serde(default)]
    plan: String,
    #[serde(default)]
    ip_allowlist: String,
    #[serde(default)]
    disabled: Option<String>,
    /// `""` for the config's policy.
    #[serde(default)]
    leak_policy: String,
}

/// Entries separated by lines, commas or spaces.
fn entries(text: &str) -> Vec<String> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|entry| !entry.is_empty())
        .map(str::to_owned)
        .collect()
}

fn optional(text: &str) -> Option<String> {
    Some(text.trim().to_owned()).filter(|text| !text.is_empty())
}

async fn create_workspace(State(state): State<AdminState>, posted: Posted<WorkspaceForm>) -> PageResult {
    let session = &posted.signed_in.session;
    require_operator(session)?;
    let form = posted.form;
    let created = state
        .engine
        .admin()
        .create_workspace(
            &session.actor,
            NewWorkspace {
                name: form.name,
                plan: optional(&form.plan),
                ip_allowlist: entries(&form.ip_allowlist),
                limits: Vec::new(),
                credits: None,
                leak_policy: None,
            },
        )
        .await?;
    Ok(redirect(&format!("/dashboard/workspaces/{}/keys", created.id)))
}

async fn workspace(
    State(state): State<AdminState>,
    signed_in: SignedIn,
    PathParam(id): PathParam<String>,
) -> PageResult {
    let session = &signed_in.session;
    require_operator(session)?;
    let ws = state.engine.admin().get_workspace(&session.actor, &id).await?;
    html(&WorkspacePage {
        layout: Layout::signed_in(
            &state.dashboard.settings.product_name,
            format!("{} settings", ws.name),
            session,
            Some(&ws),
            "settings",
        ),
        ws: WorkspaceRow::of(&ws),
        plan: ws.plan.clone(),
        plans: state.plan_names(),
        allowlist_lines: ws.ip_allowlist.to_strings().join("\n"),
        leak_policy: ws.leak_policy.map_or("", OnLeak::as_str),
        leak_policies: LEAK_POLICIES,
    })
}

async fn update_workspace(
    State(state): State<AdminState>,
    PathParam(id): PathParam<String>,
    posted: Posted<WorkspaceForm>,
) -> PageResult {
    let session = &posted.signed_in.session;
    require_operator(session)?;
    let form = posted.form;
    let leak_policy = match form.leak_policy.as_str() {
        "" => None,
        text => {
            Some(OnLeak::parse(text).ok_or_else(|| DashboardError::bad_form("Choose a leak policy from the list."))?)
        }
    };
    let patch = WorkspacePatch {
        name: Some(form.name),
        plan: Some(optional(&form.plan)),
        ip_allowlist: Some(entries(&form.ip_allowlist)),
        limits: None,
        credits: None,
        disabled: Some(form.disabled.is_some()),
        leak_policy: Some(leak_policy),
    };
    state
        .engine
        .admin()
        .update_workspace(&session.actor, &id, patch)
        .await?;
    Ok(redirect(&format!("/dashboard/workspaces/{id}")))
}

// ----- keys -----

#[derive(Deserialize)]
struct KeysQuery {
    #[serde(default)]
    status: String,
    #[serde(default)]
    environment: String,
    cursor: Option<String>,
}

/// The key list's filter value for keys reported leaked.
const LEAKED_FILTER: &str = "leaked";

/// A page URL of the key list with the current filters.
fn keys_url(workspace_id: &str, status: &str, environment: &str, cursor: Option<&str>) -> String {
    let mut pairs = vec![("status", status), ("environment", environment)];
    pairs.extend(cursor.map(|cursor| ("cursor", cursor)));
    format!(
        "/dashboard/workspaces/{workspace_id}/keys?{}",
        form_urlencoded_pairs(&pairs)
    )
}

fn form_urlencoded_pairs(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

async fn keys(
    State(state): State<AdminState>,
    signed_in: SignedIn,
    PathParam(id): PathParam<String>,
    QueryParam(query): QueryParam<KeysQuery>,
) -> PageResult {
    let session = &signed_in.session;
    // "Reported leaked" sits among the statuses in the filter, though any key may have been.
    let (status, leaked) = match query.status.as_str() {
        "" => (None, false),
        LEAKED_FILTER => (None, true),
        other => (
            Some(KeyStatus::parse(other).ok_or_else(|| DashboardError::bad_form("Unknown status filter."))?),
            false,
        ),
    };
    let filter = KeyFilter {
        status,
        environment: optional(&query.environment),
        leaked,
    };
    let page = Page {
        limit: PAGE_SIZE,
        cursor: query.cursor.clone(),
    };
    let KeyListPage {
        workspace: ws,
        keys: listed,
        total,
        last_day,
    } = state
        .engine
        .admin()
        .key_list_page(&session.actor, &id, &filter, &page)
        .await?;
    let now = state.engine.now();
    let max_age = state.dashboard.settings.max_key_age;
    let credits = credits_of_active(&state, &listed.items, &ws, now).await;
    html(&KeysPage {
        layout: Layout::signed_in(
            &state.dashboard.settings.product_name,
            "API Keys",
            session,
            Some(&ws),
            "keys",
        ),
        workspace_id: id.clone(),
        rows: listed
            .items
            .iter()
            .map(|key| {
                KeyRow::of(key, now, max_age)
                    .with_last_day(last_day.get(&key.id))
                    .with_credits(credits.get(&key.id))
            })
            .collect(),
        total,
        next_page: listed
            .next_cursor
            .as_deref()
            .map(|cursor| keys_url(&id, &query.status, &query.environment, Some(cursor))),
        first_page: query
            .cursor
            .is_some()
            .then(|| keys_url(&id, &query.status, &query.environment, None)),
        status_options: status_options(&query.status),
        environment: query.environment,
        environments: state.dashboard.environments.clone(),
        max_age_days: max_age.map(|age| age.num_days()),
        create_label: state.dashboard.settings.create_key_label.clone(),
        spark_width: Sparkline::WIDTH,
        spark_height: Sparkline::HEIGHT,
    })
}

async fn new_key(State(state): State<AdminState>, signed_in: SignedIn, PathParam(id): PathParam<String>) -> PageResult {
    let session = &signed_in.session;
    let ws = state.engine.admin().get_workspace(&session.actor, &id).await?;
    html(&NewKeyPage {
        layout: Layout::signed_in(
            &state.dashboard.settings.product_name,
            state.dashboard.settings.create_key_label.clone(),
            session,
            Some(&ws),
            "keys",
        ),
        workspace_id: id,
        environments: state.dashboard.environments.clone(),
        create_label: state.dashboard.settings.create_key_label.clone(),
        roles: role_choices(&state.engine.verifier().roles()),
    })
}

/// Each configured role with the scopes it grants, for the create form.
fn role_choices(roles: &Roles) -> Vec<(String, String)> {
    roles
        .names()
        .map(|name| (name.to_owned(), roles.scopes_of(name).unwrap_or_default().join(" ")))
        .collect()
}

#[derive(Deserialize)]
struct NewKeyForm {
    name: String,
    #[serde(default)]
    environment: String,
    #[serde(default)]
    scopes: String,
    /// One field per ticked role checkbox.
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    expires_in: String,
    #[serde(default)]
    ip_allowlist: String,
}

/// Creates the key, holds its plaintext for the one page view that shows it,
/// and redirects there; a reload of that page finds nothing to show.
async fn create_key(
    State(state): State<AdminState>,
    PathParam(id): PathParam<String>,
    posted: Posted<NewKeyForm>,
) -> PageResult {
    let Posted { signed_in, form } = posted;
    let input = NewKey {
        name: form.name,
        environment: optional(&form.environment),
        scopes: entries(&form.scopes),
        roles: form.roles,
        expires_at: None,
        expires_in: optional(&form.expires_in),
        ip_allowlist: entries(&form.ip_allowlist),
        metadata: None,
        limits: Vec::new(),
        credits: None,
    };
    let (key, plaintext) = state
        .engine
        .admin()
        .create_key(&signed_in.session.actor, &id, input)
        .await?;
    state
        .engine
        .sessions()
        .hold_reveal(&signed_in.secret, &key.id, plaintext)
        .await?;
    Ok(redirect(&format!("/dashboard/keys/{}", key.id)))
}

/// The credit balances of the listed keys that are active and have credits.
async fn credits_of_active(
    state: &AdminState,
    keys: &[ApiKey],
    workspace: &Workspace,
    now: DateTime<Utc>,
) -> HashMap<String, keygate_engine::CreditBalance> {
    let mut balances = HashMap::new();
    for key in keys.iter().filter(|key| key.status(now) == KeyStatus::Active) {
        let balance = state
            .engine
            .verifier()
            .credit_balance(key.clone(), workspace.clone())
            .await;
        if let Some(balance) = balance {
            balances.insert(key.id.clone(), balance);
        }
    }
    balances
}

async fn key_page(
    State(state): State<AdminState>,
    signed_in: SignedIn,
    PathParam(id): PathParam<String>,
) -> PageResult {
    let session = &signed_in.session;
    let key = state.engine.admin().key_record(&session.actor, &id).await?;
    let ws = state
        .engine
        .admin()
        .get_workspace(&session.actor, &key.workspace_id)
        .await?;
    let now = state.engine.now();
    let (hourly, daily) = usage_charts(&state, &key, now).await?;
    let events = state
        .engine
        .admin()
        .audit_events(
            &session.actor,
            AuditFilter {
                workspace_id: None,
                key_id: Some(key.id.clone()),
            },
            &Page::first(10),
        )
        .await?;
    let announced = state
        .engine
        .admin()
        .list_events(
            &session.actor,
            EventListFilter {
                workspace_id: None,
                subject: Some(key.id.clone()),
            },
            &Page::first(10),
        )
        .await?;
    let leak = state.engine.admin().last_leak_report(&key).await?;
    let credits = state.engine.verifier().credit_balance(key.clone(), ws.clone()).await;
    let revealed = state.engine.sessions().take_reveal(&signed_in.secret, &key.id).await?;
    let max_age = state.dashboard.settings.max_key_age;
    html(&KeyPage {
        layout: Layout::signed_in(
            &state.dashboard.settings.product_name,
            key.name.clone(),
            session,
            Some(&ws),
            "keys",
        ),
        key: KeyDetail::of(&key, now, max_age),
        revealed: revealed.as_ref().map(Revealed::expose),
        hourly_total: hourly.iter().map(chart::Bar::total).sum(),
        daily_total: daily.iter().map(chart::Bar::total).sum(),
        hourly_chart: chart::stacked_svg("Requests per hour, last 24 hours", &hourly, 3),
        daily_chart: chart::stacked_svg("Requests per day, last 30 days", &daily, 5),
        events: events.items.iter().map(AuditRow::of).collect(),
        announced: announced.items.iter().map(EventRow::of).collect(),
        max_age_days: max_age.map(|age| age.num_days()),
        leak: leak.map(|event| LeakBanner::of(&event, &key, now)),
        credits: credits.map(|balance| CreditsLeft::of(balance, now)),
    })
}

/// Bars for the last 24 hours (per hour) and the last 30 days (per day), both ending now.
async fn usage_charts(
    state: &AdminState,
    key: &keygate_core::model::ApiKey,
    now: DateTime<Utc>,
) -> Result<(Vec<chart::Bar>, Vec<chart::Bar>), DashboardError> {
    let this_hour = now.duration_trunc(Duration::hours(1)).unwrap_or(now);
    let hours_from = this_hour - Duration::hours(23);
    let today = now.duration_trunc(Duration::days(1)).unwrap_or(now);
    let days_from = today - Duration::days(29);
    let to = now + Duration::seconds(1);
    let engine = &state.engine;
    let hourly = engine.admin().usage_of(key, hours_from, to, Granularity::Hour).await?;
    let daily = engine.admin().usage_of(key, days_from, to, Granularity::Day).await?;
    Ok((
        chart::bars(&hourly, hours_from, Duration::hours(1), 24, |t| {
            t.format("%H:00").to_string()
        }),
        chart::bars(&daily, days_from, Duration::days(1), 30, |t| {
            t.format("%b %d").to_string()
        }),
    ))
}

#[derive(Deserialize)]
struct RevokeForm {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    confirm: String,
}

async fn revoke_key(
    State(state): State<AdminState>,
    PathParam(id): PathParam<String>,
    posted: Posted<RevokeForm>,
) -> PageResult {
    if posted.form.confirm != "yes" {
        return Err(DashboardError::bad_form(
            "Tick “I understand” to confirm that this key should stop working.",
        ));
    }
    let actor = &posted.signed_in.session.actor;
    state
        .engine
        .admin()
        .revoke_key(actor, &id, optional(&posted.form.reason))
        .await?;
    Ok(redirect(&format!("/dashboard/keys/{id}")))
}

#[derive(Deserialize)]
struct DeleteForm {
    #[serde(default)]
    confirm: String,
}

/// Revokes the key if needed and hides it from the list; it stays for the audit trail.
async fn delete_key(
    State(state): State<AdminState>,
    PathParam(id): PathParam<String>,
    posted: Posted<DeleteForm>,
) -> PageResult {
    if posted.form.confirm != "yes" {
        return Err(DashboardError::bad_form("Tick “I understand” to confirm the deletion."));
    }
    let deleted = state
        .engine
        .admin()
        .delete_key(&posted.signed_in.session.actor, &id)
        .await?;
    Ok(redirect(&format!(
        "/dashboard/workspaces/{}/keys",
        deleted.workspace_id
    )))
}

#[derive(Deserialize)]
struct RotateForm {
    grace: String,
}

async fn rotate_key(
    State(state): State<AdminState>,
    PathParam(id): PathParam<String>,
    posted: Posted<RotateForm>,
) -> PageResult {
    let Posted { signed_in, form } = posted;
    let grace = match form.grace.as_str() {
        "0s" | "1h" | "24h" | "7d" => form.grace,
        _ => return Err(DashboardError::bad_form("Choose a grace period from the list.")),
    };
    let (new, plaintext) = state
        .engine
        .admin()
        .rotate_key(&signed_in.session.actor, &id, Some(&grace))
        .await?;
    state
        .engine
        .sessions()
        .hold_reveal(&signed_in.secret, &new.id, plaintext)
        .await?;
    Ok(redirect(&format!("/dashboard/keys/{}", new.id)))
}

// ----- audit -----

#[derive(Deserialize)]
struct AuditQuery {
    #[serde(default)]
    workspace_id: String,
    #[serde(default)]
    key_id: String,
    cursor: Option<String>,
}

/// The live nodes (operators only), as `GET /v1/nodes` lists them.
async fn nodes(State(state): State<AdminState>, signed_in: SignedIn) -> PageResult {
    let session = &signed_in.session;
    require_operator(session)?;
    let nodes = state.engine.nodes().list(&session.actor).await?;
    let this_node = state.engine.nodes().id();
    html(&NodesPage {
        layout: Layout::signed_in(&state.dashboard.settings.product_name, "Nodes", session, None, "nodes"),
        rows: nodes.into_iter().map(|node| NodeRow::of(node, this_node)).collect(),
        live_for_secs: keygate_engine::nodes::LIVE_FOR.as_secs(),
    })
}

async fn audit(
    State(state): State<AdminState>,
    signed_in: SignedIn,
    QueryParam(query): QueryParam<AuditQuery>,
) -> PageResult {
    let session = &signed_in.session;
    let filter = AuditFilter {
        workspace_id: optional(&query.workspace_id).or_else(|| session.workspace().map(str::to_owned)),
        key_id: optional(&query.key_id),
    };
    let workspace: Option<Workspace> = match &filter.workspace_id {
        Some(id) => Some(state.engine.admin().get_workspace(&session.actor, id).await?),
        None => None,
    };
    let page = Page {
        limit: PAGE_SIZE,
        cursor: query.cursor,
    };
    let listed = state
        .engine
        .admin()
        .audit_events(&session.actor, filter.clone(), &page)
        .await?;
    let next_page = listed.next_cursor.as_deref().map(|cursor| {
        let pairs = [
            ("workspace_id", filter.workspace_id.as_deref().unwrap_or_default()),
            ("key_id", filter.key_id.as_deref().unwrap_or_default()),
            ("cursor", cursor),
        ];
        format!("/dashboard/audit?{}", form_urlencoded_pairs(&pairs))
    });
    html(&AuditPage {
        layout: Layout::signed_in(
            &state.dashboard.settings.product_name,
            "Audit log",
            session,
            workspace.as_ref(),
            "audit",
        ),
        rows: listed.items.iter().map(AuditRow::of).collect(),
        workspace_filter: filter.workspace_id.unwrap_or_default(),
        key_filter: filter.key_id.unwrap_or_default(),
        next_page,
    })
}
