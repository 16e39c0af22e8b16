//! The pages, as askama templates checked at compile time. Every value a
//! user typed is HTML-escaped by askama; only the server-drawn SVG chart is
//! inserted as markup.

use askama::Template;
use chrono::{DateTime, Duration, Utc};
use keygate_core::model::{ApiKey, KeyStatus, Workspace};
use keygate_engine::admin::HourlyRequests;
use keygate_engine::sessions::DashboardSession;
use keygate_store::{AuditEvent, Delivery, StoredEvent, WebhookEndpoint};

/// What every page's frame needs: the title, and the signed-in navigation.
pub struct Layout {
    /// The deployment's product name (`dashboard.product_name`).
    pub product: String,
    pub title: String,
    pub nav: Option<Nav>,
}

pub struct Nav {
    pub operator: bool,
    pub csrf: String,
    /// The workspace being looked at: `(id, name)`.
    pub workspace: Option<(String, String)>,
    /// Which entry is highlighted: `workspaces`, `keys`, `settings`, `audit`, `nodes`.
    pub section: &'static str,
}

impl Layout {
    pub fn signed_out(product: &str, title: &str) -> Self {
        Self {
            product: product.to_owned(),
            title: title.to_owned(),
            nav: None,
        }
    }

    pub fn signed_in(
        product: &str,
        title: impl Into<String>,
        session: &DashboardSession,
        workspace: Option<&Workspace>,
        section: &'static str,
    ) -> Self {
        Self {
            product: product.to_owned(),
            title: title.into(),
            nav: Some(Nav {
                operator: session.is_operator(),
                csrf: session.csrf_token.clone(),
                workspace: workspace.map(|ws| (ws.id.clone(), ws.name.clone())),
                section,
            }),
        }
    }
}

pub fn when(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(|| "—".to_owned(), |at| at.format("%Y-%m-%d %H:%M UTC").to_string())
}

#[derive(Template)]
#[template(path = "dashboard/sign_in.html")]
pub struct SignInPage {
    pub layout: Layout,
    pub csrf: String,
    pub error: Option<String>,
}

/// What a portal link shows before it is used: one button that redeems it
/// (a POST), so a chat app's link preview, which only GETs, uses nothing up.
#[derive(Template)]
#[template(path = "dashboard/portal.html")]
pub struct PortalPage {
    pub layout: Layout,
    pub csrf: String,
    /// The link's own path, which the button posts to.
    pub action: String,
}

#[derive(Template)]
#[template(path = "dashboard/error.html")]
pub struct ErrorPage {
    pub layout: Layout,
    pub status: u16,
    pub code: String,
    pub message: String,
}

pub struct WorkspaceRow {
    pub id: String,
    pub name: String,
    pub plan: String,
    pub allowlist: String,
    pub created: String,
    pub disabled: bool,
}

impl WorkspaceRow {
    pub fn of(ws: &Workspace) -> Self {
        Self {
            id: ws.id.clone(),
            name: ws.name.clone(),
            plan: ws.plan.clone().unwrap_or_else(|| "default".into()),
            allowlist: allowlist_text(&ws.ip_allowlist.to_strings(), ", "),
            created: when(Some(ws.created_at)),
            disabled: ws.disabled,
        }
    }
}

fn allowlist_text(entries: &[String], separator: &str) -> String {
    if entries.is_empty() {
        "any address".into()
    } else {
        entries.join(separator)
    }
}

#[derive(Template)]
#[template(path = "dashboard/workspaces.html")]
pub struct WorkspacesPage {
    pub layout: Layout,
    pub rows: Vec<WorkspaceRow>,
    pub plans: Vec<String>,
    pub next_cursor: Option<String>,
}

#[derive(Template)]
#[template(path = "dashboard/workspace.html")]
pub struct WorkspacePage {
    pub layout: Layout,
    pub ws: WorkspaceRow,
    pub plan: Option<String>,
    pub plans: Vec<String>,
    /// One CIDR per line, for the textarea.
    pub allowlist_lines: String,
    /// The workspace's leak policy (`""`: the config's) and the choices.
    pub leak_policy: &'static str,
    pub leak_policies: [(&'static str, &'static str); 4],
}

/// The choices of a workspace's leak policy: value and label.
pub const LEAK_POLICIES: [(&str, &str); 4] = [
    ("", "As configured (leaks.on_report)"),
    ("revoke", "Revoke it at once"),
    ("expire", "Let it expire after leaks.grace"),
    ("notify", "Only notify (audit and webhooks)"),
];

pub struct KeyRow {
    pub id: String,
    pub name: String,
    pub environment: String,
    pub hint: String,
    pub scopes: String,
    /// Role names, separated by spaces; empty for a key without roles.
    pub roles: String,
    /// The key's own credits as set (`1000, refilled to 1000 every 30d`);
    /// empty when it follows its workspace's or plan's.
    pub credits: String,
    pub created: Moment,
    pub last_used: Option<Moment>,
    pub expires: Option<Moment>,
    /// Requests per hour over the last day; empty where not shown (the key page).
    pub last_day: Sparkline,
    /// What its credits have left (`1.2k`), where it has credits; in the list.
    pub credits_left: Option<String>,
    pub status: &'static str,
    /// Older than `keys.max_age` and still active: time to rotate.
    pub needs_rotation: bool,
    /// Imported in another system's format and still active: rotating it
    /// moves its holder to a key with a checksum (crates/keygate-core/src/legacy.rs).
    pub legacy: bool,
}

/// A time as the dashboard shows it: how long ago or until (the key list),
/// and the exact UTC time (the key page, and the list's hover).
pub struct Moment {
    pub relative: String,
    pub exact: String,
    /// RFC 3339, for `<time datetime>`.
    pub iso: String,
}

impl Moment {
    pub fn of(at: DateTime<Utc>, now: DateTime<Utc>) -> Self {
        Self {
            relative: relative(at, now),
            exact: when(Some(at)),
            iso: at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    }
}

/// "just now", "5 minutes ago", "in 3 days": the largest whole unit, so a
/// list reads at a glance; the exact time is one hover away.
pub fn relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (now - at).num_seconds();
    let span = seconds.unsigned_abs();
    if span < 60 {
        return "just now".to_owned();
    }
    let (count, unit) = [
        (31_536_000, "year"),
        (2_592_000, "month"),
        (86_400, "day"),
        (3_600, "hour"),
        (60, "minute"),
    ]
    .into_iter()
    .find(|(size, _)| span >= *size)
    .map(|(size, unit)| (span / size, unit))
    .unwrap_or((span / 60, "minute"));
    let plural = if count == 1 { "" } else { "s" };
    if seconds >= 0 {
        format!("{count} {unit}{plural} ago")
    } else {
        format!("in {count} {unit}{plural}")
    }
}

/// A key's requests per hour over the last day as an inline SVG bar chart,
/// drawn by the template from these numbers (nothing typed by a user).
#[derive(Default)]
pub struct Sparkline {
    /// The day's total, as a person reads it: `0`, `950`, `1.2k`, `27k`, `4.1M`.
    pub total: String,
    pub exact_total: u64,
    pub bars: Vec<Bar>,
}

/// One hour's bar: `x` from the left, `y` from the top, both in pixels.
pub struct Bar {
    pub x: u32,
    pub y: u32,
    pub height: u32,
}

impl Sparkline {
    /// Pixels high; each of the 24 hours is a 2-pixel bar and a 1-pixel gap.
    pub const HEIGHT: u32 = 18;
    pub const WIDTH: u32 = 72;

    pub fn of(hours: &HourlyRequests) -> Self {
        let max = hours.iter().copied().max().unwrap_or(0);
        let bars = hours
            .iter()
            .enumerate()
            .filter(|(_, count)| **count > 0)
            .map(|(hour, count)| {
                // At least a pixel, so one request in a busy day still shows.
                let scaled = u128::from(*count) * u128::from(Self::HEIGHT) / u128::from(max.max(1));
                let height = u32::try_from(scaled).unwrap_or(Self::HEIGHT).clamp(1, Self::HEIGHT);
                Bar {
                    x: u32::try_from(hour).unwrap_or(0) * 3,
                    y: Self::HEIGHT - height,
                    height,
                }
            })
            .collect();
        let exact_total = hours.iter().fold(0u64, |sum, count| sum.saturating_add(*count));
        Self {
            total: compact(exact_total),
            exact_total,
            bars,
        }
    }
}

/// `950`, `1.2k`, `27k`, `4.1M`: a tenth shown below 10 of a unit, whole units above.
fn compact(count: u64) -> String {
    let shown = |value: u64, unit: u64, suffix: &str| {
        let tenths = value.saturating_mul(10) / unit;
        if tenths >= 100 {
            format!("{}{suffix}", tenths / 10)
        } else {
            format!("{}.{}{suffix}", tenths / 10, tenths % 10)
        }
    };
    match count {
        0..1_000 => count.to_string(),
        1_000..1_000_000 => shown(count, 1_000, "k"),
        1_000_000..1_000_000_000 => shown(count, 1_000_000, "M"),
        _ => shown(count, 1_000_000_000, "G"),
    }
}

/// Credits as a person reads them.
fn credits_text(credits: &keygate_core::credits::CreditSpec) -> String {
    match &credits.refill {
        None => format!("{}, never refilled", credits.remaining),
        Some(refill) => format!(
            "{}, refilled to {} every {}",
            credits.remaining, refill.amount, refill.every
        ),
    }
}

impl KeyRow {
    pub fn of(key: &ApiKey, now: DateTime<Utc>, max_age: Option<Duration>) -> Self {
        let status = key.status(now);
        Self {
            id: key.id.clone(),
            name: key.name.clone(),
            environment: key.environment.clone(),
            hint: key.hint.clone(),
            scopes: match (key.scopes.is_empty(), key.roles.is_empty()) {
                (true, true) => "full access".into(),
                // A key with roles is scoped (crates/keygate-core/src/role.rs).
                (true, false) => "from its roles".into(),
                (false, _) => key.scopes.join(" "),
            },
            roles: key.roles.join(" "),
            credits: key.credits.as_ref().map(credits_text).unwrap_or_default(),
            created: Moment::of(key.created_at, now),
            last_used: key.last_used_at.map(|at| Moment::of(at, now)),
            expires: key.expires_at.map(|at| Moment::of(at, now)),
            last_day: Sparkline::default(),
            credits_left: None,
            status: status.as_str(),
            needs_rotation: status == KeyStatus::Active && max_age.is_some_and(|age| now - key.created_at > age),
            legacy: key.legacy && status == KeyStatus::Active,
        }
    }

    /// The row as the key list shows it, with its last day of requests.
    pub fn with_last_day(self, hours: Option<&HourlyRequests>) -> Self {
        Self {
            last_day: Sparkline::of(hours.unwrap_or(&[0; 24])),
            ..self
        }
    }

    /// The row with what its credits have left, if it has credits.
    pub fn with_credits(self, balance: Option<&keygate_engine::CreditBalance>) -> Self {
        Self {
            credits_left: balance.map(|b| compact(b.remaining)),
            ..self
        }
    }
}

pub fn status_options(selected: &str) -> Vec<(&'static str, &'static str, bool)> {
    [
        ("", "All but deleted"),
        ("active", "Active"),
        ("revoked", "Revoked"),
        ("expired", "Expired"),
        ("deleted", "Deleted"),
        ("leaked", "Reported leaked"),
    ]
    .into_iter()
    .map(|(value, label)| (value, label, value == selected))
    .collect()
}

#[derive(Template)]
#[template(path = "dashboard/keys.html")]
pub struct KeysPage {
    pub layout: Layout,
    pub workspace_id: String,
    pub rows: Vec<KeyRow>,
    pub total: u64,
    /// `(value, label, selected)` of the status filter.
    pub status_options: Vec<(&'static str, &'static str, bool)>,
    pub environment: String,
    pub environments: Vec<String>,
    pub next_page: Option<String>,
    pub first_page: Option<String>,
    pub max_age_days: Option<i64>,
    pub create_label: String,
    pub spark_width: u32,
    pub spark_height: u32,
}

#[derive(Template)]
#[template(path = "dashboard/new_key.html")]
pub struct NewKeyPage {
    pub layout: Layout,
    pub create_label: String,
    pub workspace_id: String,
    pub environments: Vec<String>,
    /// The config's role names, offered as checkboxes; what each grants, as text.
    pub roles: Vec<(String, String)>,
}

pub struct AuditRow {
    pub at: String,
    pub actor: String,
    pub actor_ip: String,
    pub action: String,
    pub object_id: String,
    pub workspace_id: String,
    pub details: String,
}

impl AuditRow {
    pub fn of(event: &AuditEvent) -> Self {
        Self {
            at: event.at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            actor: event.actor.clone(),
            actor_ip: event.actor_ip.clone().unwrap_or_default(),
            action: event.action.clone(),
            object_id: event.object_id.clone(),
            workspace_id: event.workspace_id.clone().unwrap_or_default(),
            details: if event.details.as_object().is_some_and(|o| o.is_empty()) || event.details.is_null() {
                String::new()
            } else {
                event.details.to_string()
            },
        }
    }
}

pub struct KeyDetail {
    pub row: KeyRow,
    pub workspace_id: String,
    pub allowlist: String,
    pub created_by: String,
    pub last_used_ip: String,
    pub revoked: Option<(String, String)>,
    pub rotated_from: Option<String>,
    pub rotated_to: Option<String>,
    pub metadata: String,
    pub active: bool,
    pub deleted: bool,
    pub age_days: i64,
}

impl KeyDetail {
    pub fn of(key: &ApiKey, now: DateTime<Utc>, max_age: Option<Duration>) -> Self {
        Self {
            row: KeyRow::of(key, now, max_age),
            workspace_id: key.workspace_id.clone(),
            allowlist: allowlist_text(&key.ip_allowlist.to_strings(), ", "),
            created_by: key.created_by.clone().unwrap_or_default(),
            last_used_ip: key.last_used_ip.clone().unwrap_or_default(),
            revoked: key
                .revoked_at
                .map(|at| (when(Some(at)), key.revoked_reason.clone().unwrap_or_default())),
            rotated_from: key.rotated_from.clone(),
            rotated_to: key.rotated_to.clone(),
            metadata: if key.metadata.is_empty() {
                String::new()
            } else {
                serde_json::to_string_pretty(&key.metadata).unwrap_or_default()
            },
            active: key.status(now) == KeyStatus::Active,
            deleted: key.deleted_at.is_some(),
            age_days: (now - key.created_at).num_days(),
        }
    }
}

#[derive(Template)]
#[template(path = "dashboard/key.html")]
pub struct KeyPage {
    pub layout: Layout,
    pub key: KeyDetail,
    /// The plaintext, on the one page view after create or rotate.
    pub revealed: Option<String>,
    pub hourly_chart: String,
    pub daily_chart: String,
    pub hourly_total: u64,
    pub daily_total: u64,
    pub events: Vec<AuditRow>,
    /// What was announced about the key (webhook events), newest first.
    pub announced: Vec<EventRow>,
    pub max_age_days: Option<i64>,
    /// The key's last leak report, shown as a banner with a one-click rotate.
    pub leak: Option<LeakBanner>,
    /// Its credit balance now, its own or its workspace's or plan's.
    pub credits: Option<CreditsLeft>,
}

/// A key's credits as they stand: what is left and when they refill.
pub struct CreditsLeft {
    pub remaining: String,
    pub refill: Option<Moment>,
}

impl CreditsLeft {
    pub fn of(balance: keygate_engine::CreditBalance, now: DateTime<Utc>) -> Self {
        Self {
            remaining: compact(balance.remaining),
            refill: balance.refill_at.map(|at| Moment::of(at, now)),
        }
    }
}

/// "This key was reported leaked": when, by whom, where, what was done, and
/// whether it can still be rotated from here.
pub struct LeakBanner {
    pub when: Moment,
    pub reporter: String,
    /// Linked only if it is an `http(s)` URL; a reporter's text is not trusted.
    pub url: String,
    pub linkable: bool,
    pub outcome: &'static str,
    /// Not rotated yet and not deleted: the banner offers "Rotate now".
    pub can_rotate: bool,
}

impl LeakBanner {
    pub fn of(event: &AuditEvent, key: &ApiKey, now: DateTime<Utc>) -> Self {
        let url = event.details["url"].as_str().unwrap_or_default().to_owned();
        let linkable = url.starts_with("https://") || url.starts_with("http://");
        let outcome = match event.details["action"].as_str() {
            Some("revoked") => "It was revoked at once: rotate it to issue a replacement with the same settings.",
            Some("expiring") => "It stops working soon (see Expires): rotate it now.",
            Some("notified") => "It still works: rotate it now.",
            _ => "It had already stopped working when it was reported.",
        };
        Self {
            when: Moment::of(event.at, now),
            reporter: event.actor.clone(),
            url,
            linkable,
            outcome,
            can_rotate: key.rotated_to.is_none() && key.deleted_at.is_none(),
        }
    }
}

#[derive(Template)]
#[template(path = "dashboard/audit.html")]
pub struct AuditPage {
    pub layout: Layout,
    pub rows: Vec<AuditRow>,
    pub workspace_filter: String,
    pub key_filter: String,
    pub next_page: Option<String>,
}

#[derive(Template)]
#[template(path = "dashboard/nodes.html")]
pub struct NodesPage {
    pub layout: Layout,
    pub rows: Vec<NodeRow>,
    pub live_for_secs: u64,
}

/// A live node, as the operator's nodes page shows it.
pub struct NodeRow {
    pub id: String,
    pub version: String,
    pub gateway_addr: String,
    pub admin_addr: String,
    pub started_at: String,
    pub last_heartbeat: String,
    pub hearing: String,
    pub cache_size: u64,
    pub this_node: bool,
}

impl NodeRow {
    pub fn of(node: keygate_store::NodeRecord, this_node: &str) -> Self {
        Self {
            this_node: node.id == this_node,
            id: node.id,
            version: node.version,
            gateway_addr: node.gateway_addr,
            admin_addr: node.admin_addr,
            started_at: node.started_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            last_heartbeat: node.last_heartbeat.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            hearing: node.hearing.replace('_', " "),
            cache_size: node.cache_size,
        }
    }
}

/// An event from the outbox, as the alerts list and the key page show it.
pub struct EventRow {
    pub id: String,
    pub at: String,
    pub kind: String,
    /// Set when the event is about a key, for the link.
    pub key_id: Option<String>,
    /// The event's `data`, as compact JSON.
    pub data: String,
}

impl EventRow {
    pub fn of(event: &StoredEvent) -> Self {
        let body: serde_json::Value = serde_json::from_str(&event.body).unwrap_or_default();
        Self {
            id: event.id.clone(),
            at: event.at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            kind: event.kind.clone(),
            key_id: event.subject.clone().filter(|subject| subject.starts_with("key_")),
            data: body.get("data").map(serde_json::Value::to_string).unwrap_or_default(),
        }
    }
}

pub struct WebhookRow {
    pub id: String,
    pub url: String,
    /// `All workspaces`, or the workspace id.
    pub scope: String,
    pub events: String,
    pub description: String,
    pub created: String,
}

impl WebhookRow {
    pub fn of(endpoint: &WebhookEndpoint) -> Self {
        let events = endpoint.events.names();
        Self {
            id: endpoint.id.clone(),
            url: endpoint.url.clone(),
            scope: endpoint
                .workspace_id
                .clone()
                .unwrap_or_else(|| "All workspaces".to_owned()),
            events: if events.is_empty() {
                "All events".to_owned()
            } else {
                events.join(", ")
            },
            description: endpoint.description.clone().unwrap_or_default(),
            created: when(Some(endpoint.created_at)),
        }
    }
}

pub struct DeliveryRow {
    pub event_id: String,
    pub event_type: String,
    pub status: &'static str,
    pub created: String,
    pub next_attempt: String,
    /// One line per attempt: when, and the answer or the error.
    pub attempts: Vec<String>,
}

impl DeliveryRow {
    pub fn of(delivery: &Delivery) -> Self {
        Self {
            event_id: delivery.event_id.clone(),
            event_type: delivery.event_type.clone(),
            status: delivery.status.as_str(),
            created: when(Some(delivery.created_at)),
            next_attempt: when(delivery.next_attempt_at),
            attempts: delivery
                .attempts
                .iter()
                .map(|attempt| {
                    let answer = match (attempt.status_code, &attempt.error) {
                        (_, Some(error)) => error.clone(),
                        (Some(code), None) => format!("HTTP {code}"),
                        (None, None) => String::new(),
                    };
                    format!(
                        "#{} {} · {answer} · {} ms",
                        attempt.attempt,
                        attempt.at.format("%H:%M:%S"),
                        attempt.duration_ms
                    )
                })
                .collect(),
        }
    }
}

#[derive(Template)]
#[template(path = "dashboard/alerts.html")]
pub struct AlertsPage {
    pub layout: Layout,
    pub events: Vec<EventRow>,
    pub endpoints: Vec<WebhookRow>,
    /// The workspace new endpoints belong to; empty for operators' global view.
    pub workspace_id: String,
    pub event_types: Vec<&'static str>,
    pub next_page: Option<String>,
}

#[derive(Template)]
#[template(path = "dashboard/webhook.html")]
pub struct WebhookPage {
    pub layout: Layout,
    pub endpoint: WebhookRow,
    /// The signing secret, on the one page view after creation.
    pub revealed: Option<String>,
    pub deliveries: Vec<DeliveryRow>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use keygate_store::testsuite::sample_key;

    use super::*;

    #[test]
    fn only_active_keys_older_than_the_max_age_are_flagged() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let max_age = Some(Duration::days(90));
        let key = |age: Duration| ApiKey {
            created_at: now - age,
            scopes: vec![],
            roles: vec![],
            last_used_at: None,
            ..sample_key("ws_1", "n")
        };
        let old = key(Duration::days(91));
        assert!(KeyRow::of(&old, now, max_age).needs_rotation);
        assert!(!KeyRow::of(&old, now, None).needs_rotation, "no policy, no flag");
        assert!(!KeyRow::of(&key(Duration::days(89)), now, max_age).needs_rotation);
        let revoked = ApiKey {
            revoked_at: Some(now),
            ..old.clone()
        };
        assert!(!KeyRow::of(&revoked, now, max_age).needs_rotation, "nothing to rotate");
        assert_eq!(KeyRow::of(&old, now, max_age).scopes, "full access");
        let with_role = ApiKey {
            roles: vec!["reader".into()],
            ..old.clone()
        };
        let row = KeyRow::of(&with_role, now, max_age);
        assert_eq!((row.scopes.as_str(), row.roles.as_str()), ("from its roles", "reader"));
        assert_eq!(row.credits, "1000, refilled to 500 every 30d");
        let plan_credits = ApiKey {
            credits: None,
            ..old.clone()
        };
        assert_eq!(
            KeyRow::of(&plan_credits, now, max_age).credits,
            "",
            "its workspace's or plan's"
        );
        assert!(KeyRow::of(&old, now, max_age).last_used.is_none());
    }

    #[test]
    fn times_read_in_their_largest_whole_unit() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let cases = [
            (Duration::seconds(59), "just now"),
            (Duration::seconds(-30), "just now"),
            (Duration::seconds(60), "1 minute ago"),
            (Duration::minutes(59), "59 minutes ago"),
            (Duration::hours(1), "1 hour ago"),
            (Duration::days(3) + Duration::hours(23), "3 days ago"),
            (Duration::days(45), "1 month ago"),
            (Duration::days(800), "2 years ago"),
            (-Duration::days(30), "in 1 month"),
            (-Duration::hours(5), "in 5 hours"),
        ];
        for (ago, expected) in cases {
            assert_eq!(relative(now - ago, now), expected, "{ago:?}");
        }
        let moment = Moment::of(now - Duration::days(3), now);
        assert_eq!(
            (moment.exact.as_str(), moment.iso.as_str()),
            ("2027-01-12 08:00 UTC", "2027-01-12T08:00:00Z")
        );
    }

    #[test]
    fn the_last_day_is_drawn_to_scale_and_one_request_still_shows() {
        let mut hours = [0u64; 24];
        hours[0] = 1;
        hours[23] = 18_000;
        hours[12] = 9_000;
        let spark = Sparkline::of(&hours);
        let drawn: Vec<(u32, u32, u32)> = spark.bars.iter().map(|b| (b.x, b.y, b.height)).collect();
        assert_eq!(drawn, [(0, 17, 1), (36, 9, 9), (69, 0, 18)]);
        assert_eq!((spark.total.as_str(), spark.exact_total), ("27k", 27_001));
        assert!(Sparkline::of(&[0; 24]).bars.is_empty());
        assert_eq!(Sparkline::of(&[u64::MAX; 24]).exact_total, u64::MAX, "saturates");
        let totals: Vec<String> = [0, 999, 1_000, 12_345, 999_999, 4_100_000, 7_000_000_000]
            .into_iter()
            .map(compact)
            .collect();
        assert_eq!(totals, ["0", "999", "1.0k", "12k", "999k", "4.1M", "7.0G"]);
    }
}
