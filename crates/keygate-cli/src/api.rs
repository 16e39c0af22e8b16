//! Commands that talk to a running server's admin API.

use clap::{Args, Subcommand};
use reqwest::{Client, Method};
use serde_json::{json, Map, Value};

use crate::output;

#[derive(Args, Clone)]
pub struct Connection {
    /// Admin API base URL.
    #[arg(long, env = "KEYGATE_URL", default_value = "http://127.0.0.1:8081", global = true)]
    url: String,
    /// Admin key (prefer the environment variable: flags show up in process lists).
    #[arg(long, env = "KEYGATE_ADMIN_KEY", hide_env_values = true, global = true)]
    admin_key: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Args)]
pub struct KeysArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print rules that find this deployment's keys in leaked text (its prefix
    /// and environments, from the config; no server needed).
    Patterns {
        #[arg(long, value_enum, default_value = "regex")]
        format: crate::patterns::PatternFormat,
    },
    /// Create a key; its plaintext is printed once.
    Create {
        #[arg(long)]
        workspace: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        environment: Option<String>,
        /// Repeat for several scopes. None means full access to the workspace.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// A role of the config's `[roles]`; repeat for several.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// e.g. 90d
        #[arg(long)]
        expires_in: Option<String>,
        /// Repeat for several CIDRs.
        #[arg(long = "ip")]
        ip_allowlist: Vec<String>,
        /// Per-key limit override: `100/1m`, `uploads:100/1h`, `workspace:1000/1d`... Repeatable.
        #[arg(long = "limit", value_parser = parse_limit)]
        limits: Vec<Value>,
        /// Usage credits: `1000` (spent, never refilled) or `1000+1000/30d`
        /// (set back to 1000 every 30 days).
        #[arg(long, value_parser = parse_credits)]
        credits: Option<Value>,
    },
    /// Change a key's name, scopes, roles, limit overrides or credits.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        /// Replaces the scopes; repeat for several.
        #[arg(long = "scope")]
        scopes: Option<Vec<String>>,
        /// Replaces the roles; repeat for several.
        #[arg(long = "role")]
        roles: Option<Vec<String>>,
        /// Replaces the limit overrides; repeat for several (`100/1m`, `uploads:100/1h`).
        #[arg(long = "limit", value_parser = parse_limit)]
        limits: Option<Vec<Value>>,
        /// Sets the credits, a new balance from now: `1000`, `1000+1000/30d`,
        /// or `none` to follow the workspace's or plan's again.
        #[arg(long, value_parser = parse_credits)]
        credits: Option<Value>,
    },
    /// Import keys that already exist (another gateway's export, your own
    /// database): CSV with a header row, or JSON lines. Each row has `key`
    /// (the key itself) or `hash` (its SHA-256, hex or base64), and
    /// optionally `name`, `environment`, `scopes`, `expires_at`, `metadata`,
    /// `hint`. Re-running adds nothing; an interrupted run resumes.
    Import {
        file: std::path::PathBuf,
        #[arg(long)]
        workspace: String,
        /// Default: from the extension (`.csv` is CSV, anything else JSON lines).
        #[arg(long, value_enum)]
        format: Option<crate::import::FileFormat>,
        /// Take keys not in this deployment's format even where the server
        /// does not verify them yet (`keys.legacy = false`).
        #[arg(long)]
        legacy: bool,
        /// Rows per request, at most 1000.
        #[arg(long, default_value_t = crate::import::DEFAULT_BATCH, value_parser = clap::value_parser!(u16).range(1..=1000))]
        batch_size: u16,
        /// Start from the first row, ignoring an interrupted run's state.
        #[arg(long)]
        restart: bool,
    },
    /// List a workspace's keys.
    List {
        #[arg(long)]
        workspace: String,
        /// active, revoked, expired or deleted
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        environment: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        cursor: Option<String>,
    },
    Get {
        id: String,
    },
    Revoke {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Issue a successor key; the old one works for the grace period.
    Rotate {
        id: String,
        /// 0, 1h, 24h (default), 7d
        #[arg(long)]
        grace: Option<String>,
    },
    /// Find this deployment's keys in files (a pre-commit hook, a CI step):
    /// `.gitignore` respected, binaries skipped, checksums verified offline,
    /// keys printed masked. Exits non-zero when a key that may be live is found.
    Scan {
        /// Files and folders to scan (default: the current folder).
        #[arg(default_value = ".")]
        paths: Vec<std::path::PathBuf>,
        /// Ask the server which found keys are live (sends their SHA-256
        /// hashes only); then only live keys fail the run.
        #[arg(long)]
        check: bool,
    },
    /// Check a key as the gateway would (`POST /v1/keys/verify`). The key is
    /// read from standard input, so it stays out of shell history and process lists.
    Verify {
        /// A scope the operation needs; repeat for several.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// A rate-limit resource it counts against; repeat to stack several (default: `default`).
        #[arg(long = "resource")]
        resources: Vec<String>,
        /// What it spends of each limit (default 1).
        #[arg(long)]
        cost: Option<u64>,
        /// The client's IP, checked against allowlists.
        #[arg(long)]
        ip: Option<String>,
        /// Decide without charging limits or recording usage.
        #[arg(long)]
        dry_run: bool,
    },
    /// Requests per bucket, by outcome.
    Usage {
        id: String,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        /// minute, hour or day
        #[arg(long)]
        granularity: Option<String>,
    },
}

#[derive(Args)]
pub struct WorkspacesArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: WorkspacesCommand,
}

#[derive(Subcommand)]
enum WorkspacesCommand {
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        plan: Option<String>,
        #[arg(long = "ip")]
        ip_allowlist: Vec<String>,
        /// Workspace limit override ("enterprise: custom"): `5000/1m`, `uploads:1000/1h`. Repeatable.
        #[arg(long = "limit", value_parser = parse_limit)]
        limits: Vec<Value>,
        /// Credits for each of its keys, overriding the plan's: `1000` or `1000+1000/30d`.
        #[arg(long, value_parser = parse_credits)]
        credits: Option<Value>,
        /// What a leak report of one of its live keys does (default: `leaks.on_report`).
        #[arg(long, value_parser = ["revoke", "expire", "notify"])]
        leak_policy: Option<String>,
    },
    List {
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        cursor: Option<String>,
    },
    Get {
        id: String,
    },
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        plan: Option<String>,
        #[arg(long)]
        disabled: Option<bool>,
        /// Replaces the allowlist; repeat for several CIDRs.
        #[arg(long = "ip")]
        ip_allowlist: Option<Vec<String>>,
        /// Replaces the limit overrides; repeat for several.
        #[arg(long = "limit", value_parser = parse_limit)]
        limits: Option<Vec<Value>>,
        /// Credits for each of its keys: `1000`, `1000+1000/30d`, or `none`
        /// to follow the plan's again.
        #[arg(long, value_parser = parse_credits)]
        credits: Option<Value>,
        /// `revoke`, `expire` or `notify`; `default` follows `leaks.on_report` again.
        #[arg(long, value_parser = ["revoke", "expire", "notify", "default"])]
        leak_policy: Option<String>,
    },
    Delete {
        id: String,
    },
}

const KEY_COLUMNS: &[&str] = &[
    "id",
    "name",
    "environment",
    "masked",
    "scopes",
    "roles",
    "status",
    "created_at",
    "last_used_at",
    "expires_at",
];
const WORKSPACE_COLUMNS: &[&str] = &["id", "name", "plan", "disabled", "created_at"];
const USAGE_COLUMNS: &[&str] = &["start", "total", "outcomes"];

struct Api {
    client: Client,
    base: String,
    key: String,
}

impl Api {
    fn new(connection: &Connection) -> Result<Self, String> {
        let key = connection
            .admin_key
            .clone()
            .ok_or("no admin key: set KEYGATE_ADMIN_KEY (or --admin-key)")?;
        Ok(Self {
            client: Client::new(),
            base: connection.url.trim_end_matches('/').to_owned(),
            key,
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, Option<String>)],
        body: Option<Value>,
    ) -> Result<Value, String> {
        let query: Vec<(&str, String)> = query.iter().filter_map(|(k, v)| v.clone().map(|v| (*k, v))).collect();
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("X-API-Key", &self.key)
            .query(&query);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("cannot reach {}: {e}", self.base))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| e.to_string())?;
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            return Ok(value);
        }
        let code = value.get("code").and_then(Value::as_str).unwrap_or("ERROR");
        let message = value.get("message").and_then(Value::as_str).unwrap_or("request failed");
        Err(format!("{} {code}: {message}", status.as_u16()))
    }
}

/// The first line of standard input, trimmed: the key `keys verify` checks.
fn read_key_from_stdin() -> Result<String, String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the key from standard input: {e}"))?;
    let key = line.trim();
    if key.is_empty() {
        return Err("give the key to verify on standard input, e.g. `keygate keys verify < key.txt`".into());
    }
    Ok(key.to_owned())
}

/// `[scope:][resource:]REQUESTS/PER`, e.g. `100/1m`, `uploads:100/1h`,
/// `workspace:uploads:1000/1d`. The server validates the values.
fn parse_limit(text: &str) -> Result<Value, String> {
    let (prefix, rate) = match text.rsplit_once(':') {
        Some((prefix, rate)) => (Some(prefix), rate),
        None => (None, text),
    };
    let (requests, per) = rate.split_once('/').ok_or("expected REQUESTS/PER, e.g. 100/1m")?;
    let requests: u64 = requests
        .parse()
        .map_err(|_| format!("`{requests}` is not a number of requests"))?;
    let mut limit = json!({"requests": requests, "per": per});
    for part in prefix.into_iter().flat_map(|p| p.split(':')) {
        match part {
            "workspace" | "key" => limit["scope"] = json!(part),
            resource => limit["resource"] = json!(resource),
        }
    }
    Ok(limit)
}

/// `REMAINING[+AMOUNT/EVERY]`, e.g. `1000` or `1000+1000/30d`; `none` is
/// null (no credits of its own). The server validates the values.
fn parse_credits(text: &str) -> Result<Value, String> {
    if text == "none" {
        return Ok(Value::Null);
    }
    let number = |n: &str| {
        n.parse::<u64>()
            .map_err(|_| format!("`{n}` is not a number of credits"))
    };
    match text.split_once('+') {
        None => Ok(json!({"remaining": number(text)?})),
        Some((remaining, refill)) => {
            let (amount, every) = refill
                .split_once('/')
                .ok_or("expected REMAINING+AMOUNT/EVERY, e.g. 1000+1000/30d")?;
            Ok(json!({"remaining": number(remaining)?, "refill": {"amount": number(amount)?, "every": every}}))
        }
    }
}

fn object(pairs: Vec<(&str, Option<Value>)>) -> Value {
    let map: Map<String, Value> = pairs
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
        .collect();
    Value::Object(map)
}

fn print_created_key(value: &Value, json: bool) {
    if json {
        output::print(value, true, &[]);
        return;
    }
    let key = value.get("key").and_then(Value::as_str).unwrap_or_default();
    println!(
        "Created {} ({}). The key is shown once; store it now:",
        value["id"].as_str().unwrap_or_default(),
        value["name"].as_str().unwrap_or_default()
    );
    println!();
    println!("    {key}");
    println!();
}

/// The `keys` commands that read the local config: patterns (no server at
/// all) and scan (the server only with `--check`).
pub enum LocalKeys<'a> {
    Patterns(crate::patterns::PatternFormat),
    Scan {
        paths: &'a [std::path::PathBuf],
        check: bool,
    },
}

impl KeysArgs {
    pub fn local(&self) -> Option<LocalKeys<'_>> {
        match &self.command {
            KeysCommand::Patterns { format } => Some(LocalKeys::Patterns(*format)),
            KeysCommand::Scan { paths, check } => Some(LocalKeys::Scan { paths, check: *check }),
            _ => None,
        }
    }

    pub fn json(&self) -> bool {
        self.connection.json
    }

    /// The keys among `hashes` the server knows, in calls of at most 500.
    pub async fn lookup(&self, hashes: &[String]) -> Result<Vec<Value>, String> {
        let api = Api::new(&self.connection)?;
        let mut found = Vec::new();
        for batch in hashes.chunks(keygate_engine::admin::MAX_HASHES_PER_LOOKUP) {
            let answer = api
                .call(
                    Method::POST,
                    "/v1/keys/lookup",
                    &[],
                    Some(crate::scan::lookup_body(batch)),
                )
                .await?;
            found.extend(answer["data"].as_array().cloned().unwrap_or_default());
        }
        Ok(found)
    }
}

pub async fn keys(args: KeysArgs) -> Result<(), String> {
    let api = Api::new(&args.connection)?;
    let json = args.connection.json;
    match args.command {
        KeysCommand::Patterns { .. } | KeysCommand::Scan { .. } => {
            return Err("`keys patterns` and `keys scan` read the local config".into())
        }
        KeysCommand::Create {
            workspace,
            name,
            environment,
            scopes,
            roles,
            expires_in,
            ip_allowlist,
            limits,
            credits,
        } => {
            let body = object(vec![
                ("name", Some(json!(name))),
                ("credits", credits),
                ("environment", environment.map(Value::from)),
                ("scopes", Some(json!(scopes))),
                ("roles", Some(json!(roles))),
                ("expires_in", expires_in.map(Value::from)),
                ("ip_allowlist", Some(json!(ip_allowlist))),
                ("limits", Some(json!(limits))),
            ]);
            let created = api
                .call(
                    Method::POST,
                    &format!("/v1/workspaces/{workspace}/keys"),
                    &[],
                    Some(body),
                )
                .await?;
            print_created_key(&created, json);
        }
        KeysCommand::Import {
            file,
            workspace,
            format,
            legacy,
            batch_size,
            restart,
        } => {
            let path = format!("/v1/workspaces/{workspace}/keys/import");
            let job = crate::import::ImportJob {
                path: &file,
                workspace: &workspace,
                format: format.unwrap_or_else(|| crate::import::FileFormat::of(&file)),
                legacy,
                batch: usize::from(batch_size),
                restart,
                json,
            };
            crate::import::run(job, |body| api.call(Method::POST, &path, &[], Some(body))).await?;
        }
        KeysCommand::List {
            workspace,
            status,
            environment,
            limit,
            cursor,
        } => {
            let query = [
                ("status", status),
                ("environment", environment),
                ("limit", limit.map(|l| l.to_string())),
                ("cursor", cursor),
            ];
            let list = api
                .call(Method::GET, &format!("/v1/workspaces/{workspace}/keys"), &query, None)
                .await?;
            output::print(&list, json, KEY_COLUMNS);
        }
        KeysCommand::Update {
            id,
            name,
            scopes,
            roles,
            limits,
            credits,
        } => {
            let body = object(vec![
                ("name", name.map(Value::from)),
                ("credits", credits),
                ("scopes", scopes.map(|s| json!(s))),
                ("roles", roles.map(|r| json!(r))),
                ("limits", limits.map(|l| json!(l))),
            ]);
            output::print(
                &api.call(Method::PATCH, &format!("/v1/keys/{id}"), &[], Some(body))
                    .await?,
                json,
                &[],
            );
        }
        KeysCommand::Get { id } => output::print(
            &api.call(Method::GET, &format!("/v1/keys/{id}"), &[], None).await?,
            json,
            &[],
        ),
        KeysCommand::Revoke { id, reason } => {
            let body = object(vec![("reason", reason.map(Value::from))]);
            output::print(
                &api.call(Method::POST, &format!("/v1/keys/{id}/revoke"), &[], Some(body))
                    .await?,
                json,
                &[],
            );
        }
        KeysCommand::Rotate { id, grace } => {
            let body = object(vec![("grace", grace.map(Value::from))]);
            let created = api
                .call(Method::POST, &format!("/v1/keys/{id}/rotate"), &[], Some(body))
                .await?;
            print_created_key(&created, json);
        }
        KeysCommand::Verify {
            scopes,
            resources,
            cost,
            ip,
            dry_run,
        } => {
            let presented = read_key_from_stdin()?;
            let body = object(vec![
                ("key", Some(json!(presented))),
                ("scopes", Some(json!(scopes))),
                ("resources", (!resources.is_empty()).then(|| json!(resources))),
                ("cost", cost.map(Value::from)),
                ("ip", ip.map(Value::from)),
                ("dry_run", Some(json!(dry_run))),
            ]);
            output::print(
                &api.call(Method::POST, "/v1/keys/verify", &[], Some(body)).await?,
                json,
                &[],
            );
        }
        KeysCommand::Usage {
            id,
            from,
            to,
            granularity,
        } => {
            let query = [("from", from), ("to", to), ("granularity", granularity)];
            output::print(
                &api.call(Method::GET, &format!("/v1/keys/{id}/usage"), &query, None)
                    .await?,
                json,
                USAGE_COLUMNS,
            );
        }
    }
    Ok(())
}

pub async fn workspaces(args: WorkspacesArgs) -> Result<(), String> {
    let api = Api::new(&args.connection)?;
    let json = args.connection.json;
    match args.command {
        WorkspacesCommand::Create {
            name,
            plan,
            ip_allowlist,
            limits,
            credits,
            leak_policy,
        } => {
            let body = object(vec![
                ("name", Some(json!(name))),
                ("credits", credits),
                ("plan", plan.map(Value::from)),
                ("ip_allowlist", Some(json!(ip_allowlist))),
                ("limits", Some(json!(limits))),
                ("leak_policy", leak_policy.map(Value::from)),
            ]);
            output::print(
                &api.call(Method::POST, "/v1/workspaces", &[], Some(body)).await?,
                json,
                &[],
            );
        }
        WorkspacesCommand::List { limit, cursor } => {
            let query = [("limit", limit.map(|l| l.to_string())), ("cursor", cursor)];
            output::print(
                &api.call(Method::GET, "/v1/workspaces", &query, None).await?,
                json,
                WORKSPACE_COLUMNS,
            );
        }
        WorkspacesCommand::Get { id } => output::print(
            &api.call(Method::GET, &format!("/v1/workspaces/{id}"), &[], None)
                .await?,
            json,
            &[],
        ),
        WorkspacesCommand::Update {
            id,
            name,
            plan,
            disabled,
            ip_allowlist,
            limits,
            credits,
            leak_policy,
        } => {
            // `default` is null on the wire: the workspace follows the config again.
            let leak_policy = leak_policy.map(|p| if p == "default" { Value::Null } else { Value::from(p) });
            let body = object(vec![
                ("name", name.map(Value::from)),
                ("plan", plan.map(Value::from)),
                ("disabled", disabled.map(Value::from)),
                ("ip_allowlist", ip_allowlist.map(|l| json!(l))),
                ("limits", limits.map(|l| json!(l))),
                ("credits", credits),
                ("leak_policy", leak_policy),
            ]);
            output::print(
                &api.call(Method::PATCH, &format!("/v1/workspaces/{id}"), &[], Some(body))
                    .await?,
                json,
                &[],
            );
        }
        WorkspacesCommand::Delete { id } => {
            api.call(Method::DELETE, &format!("/v1/workspaces/{id}"), &[], None)
                .await?;
            if json {
                println!("{}", json!({"id": id, "deleted": true}));
            } else {
                println!("Deleted workspace {id}; its keys are revoked.");
            }
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct WebhooksArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: WebhooksCommand,
}

#[derive(Subcommand)]
enum WebhooksCommand {
    /// Create an endpoint; its signing secret is printed once.
    Create {
        /// Where deliveries are POSTed (http:// or https://). Positional:
        /// `--url` names the admin API.
        #[arg(value_name = "URL")]
        endpoint: String,
        /// Only this workspace's events. Without it: every workspace's (admin keys only).
        #[arg(long)]
        workspace: Option<String>,
        /// An event type to receive (key.revoked, usage.anomaly, ...); repeatable. None: all.
        #[arg(long = "event")]
        events: Vec<String>,
        #[arg(long)]
        description: Option<String>,
    },
    List {
        #[arg(long)]
        workspace: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Stop delivering to an endpoint.
    Delete { id: String },
    /// Deliveries to an endpoint, newest first, with their attempts.
    Deliveries {
        id: String,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        cursor: Option<String>,
    },
}

const WEBHOOK_COLUMNS: &[&str] = &["id", "url", "workspace_id", "events", "created_at"];
const DELIVERY_COLUMNS: &[&str] = &[
    "id",
    "event_type",
    "status",
    "created_at",
    "next_attempt_at",
    "delivered_at",
];
const EVENT_COLUMNS: &[&str] = &["id", "type", "at", "workspace_id"];

pub async fn webhooks(args: WebhooksArgs) -> Result<(), String> {
    let api = Api::new(&args.connection)?;
    let json = args.connection.json;
    match args.command {
        WebhooksCommand::Create {
            endpoint,
            workspace,
            events,
            description,
        } => {
            let body = object(vec![
                ("url", Some(json!(endpoint))),
                ("workspace_id", workspace.map(Value::from)),
                ("events", Some(json!(events))),
                ("description", description.map(Value::from)),
            ]);
            let created = api.call(Method::POST, "/v1/webhooks", &[], Some(body)).await?;
            if json {
                output::print(&created, true, &[]);
            } else {
                println!(
                    "Created {} for {}. Its signing secret is shown once; store it now:",
                    created["id"].as_str().unwrap_or_default(),
                    created["url"].as_str().unwrap_or_default()
                );
                println!();
                println!("    {}", created["secret"].as_str().unwrap_or_default());
                println!();
            }
        }
        WebhooksCommand::List {
            workspace,
            limit,
            cursor,
        } => {
            let query = [
                ("workspace_id", workspace),
                ("limit", limit.map(|l| l.to_string())),
                ("cursor", cursor),
            ];
            output::print(
                &api.call(Method::GET, "/v1/webhooks", &query, None).await?,
                json,
                WEBHOOK_COLUMNS,
            );
        }
        WebhooksCommand::Delete { id } => {
            api.call(Method::DELETE, &format!("/v1/webhooks/{id}"), &[], None)
                .await?;
            if json {
                println!("{}", json!({"id": id, "deleted": true}));
            } else {
                println!("Deleted webhook {id}; nothing more is delivered to it.");
            }
        }
        WebhooksCommand::Deliveries { id, limit, cursor } => {
            let query = [("limit", limit.map(|l| l.to_string())), ("cursor", cursor)];
            output::print(
                &api.call(Method::GET, &format!("/v1/webhooks/{id}/deliveries"), &query, None)
                    .await?,
                json,
                DELIVERY_COLUMNS,
            );
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct EventsArgs {
    #[command(flatten)]
    connection: Connection,
    #[arg(long)]
    workspace: Option<String>,
    /// One key's events.
    #[arg(long)]
    key: Option<String>,
    #[arg(long)]
    limit: Option<u32>,
    #[arg(long)]
    cursor: Option<String>,
}

/// The outbox, newest first: what webhooks receive.
pub async fn events(args: EventsArgs) -> Result<(), String> {
    let api = Api::new(&args.connection)?;
    let query = [
        ("workspace_id", args.workspace),
        ("key_id", args.key),
        ("limit", args.limit.map(|l| l.to_string())),
        ("cursor", args.cursor),
    ];
    output::print(
        &api.call(Method::GET, "/v1/events", &query, None).await?,
        args.connection.json,
        EVENT_COLUMNS,
    );
    Ok(())
}

#[derive(Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    connection: Connection,
}

/// `POST /v1/config/reload`: the server re-reads its own file, so this
/// works from any machine that reaches the admin API.
pub async fn reload_config(args: ReloadArgs) -> Result<(), String> {
    let api = Api::new(&args.connection)?;
    let reloaded = api.call(Method::POST, "/v1/config/reload", &[], None).await?;
    if args.connection.json {
        output::print(&reloaded, true, &[]);
        return Ok(());
    }
    let changed: Vec<&str> = reloaded["changed"]
        .as_array()
        .map(|fields| fields.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let routes = reloaded["routes"].as_u64().unwrap_or_default();
    match changed.as_slice() {
        [] => println!("Config reloaded: nothing changed ({routes} routes)."),
        fields => println!("Config reloaded: {} changed ({routes} routes).", fields.join(", ")),
    }
    Ok(())
}
