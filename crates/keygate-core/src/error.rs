//! The error catalog: every error a client can see, with a stable code, an
//! HTTP status and a message that says what to do, rendered in the format a
//! deployment chose. Rendering is pure so the gateway, the verify API and the
//! admin API answer identically; the HTTP layer only copies the result out.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Declares [`ErrorCode`] from one table: one row per code, with its wire
/// name, its default HTTP status and its default message. The enum, the list
/// of all codes, the name, the status and the message are all derived from
/// it, so a new code is one row (meilisearch's `error.rs` is the model).
macro_rules! error_codes {
    ($($code:ident => $name:literal, $status:literal, $message:literal;)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum ErrorCode {
            $(#[serde(rename = $name)] $code,)*
        }

        impl ErrorCode {
            pub const ALL: [ErrorCode; [$($name),*].len()] = [$(Self::$code),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$code => $name,)*
                }
            }

            pub fn default_status(self) -> u16 {
                match self {
                    $(Self::$code => $status,)*
                }
            }

            /// `{scope}` is replaced by the missing scope; deployments may use it too.
            pub fn default_message(self) -> &'static str {
                match self {
                    $(Self::$code => $message,)*
                }
            }
        }
    };
}

error_codes! {
    // Data plane.
    MissingApiKey => "MISSING_API_KEY", 401,
        "API key is required. Send it in the X-API-Key header or as Authorization: Bearer <key>.";
    AmbiguousApiKey => "AMBIGUOUS_API_KEY", 400,
        "Two different API keys were sent. Send one key, in X-API-Key or Authorization: Bearer.";
    InvalidApiKey => "INVALID_API_KEY", 401,
        "The API key is invalid. Check that it was copied completely.";
    ApiKeyExpired => "API_KEY_EXPIRED", 401,
        "The API key has expired. Use a current key or create a new one.";
    ApiKeyRevoked => "API_KEY_REVOKED", 401,
        "The API key has been revoked. Use a current key or create a new one.";
    WorkspaceDisabled => "WORKSPACE_DISABLED", 403,
        "The workspace of this API key is disabled. Contact support.";
    IpNotAllowed => "IP_NOT_ALLOWED", 403,
        "Requests from this IP address are not allowed for this API key.";
    InsufficientScope => "INSUFFICIENT_SCOPE", 403,
        "The API key lacks the scope this request needs: {scope}.";
    RateLimitExceeded => "RATE_LIMIT_EXCEEDED", 429,
        "Too many requests. Please try again later.";
    ConcurrencyLimitExceeded => "CONCURRENCY_LIMIT_EXCEEDED", 429,
        "Too many open connections for this API key. Close one and retry.";
    UsageExceeded => "USAGE_EXCEEDED", 429,
        "This API key has used all its credits. They refill at the time given, or ask for more.";
    TooManyFailedAttempts => "TOO_MANY_FAILED_ATTEMPTS", 429,
        "Too many requests with invalid API keys from this address. Wait before retrying.";
    RouteNotFound => "ROUTE_NOT_FOUND", 404,
        "No route matches this request.";
    InvalidPath => "INVALID_PATH", 400,
        "The request path is not valid: encoded slashes, control characters and `..` above the root are refused.";
    MalformedRequest => "MALFORMED_REQUEST", 400,
        "The request is not well-formed HTTP: send one Host header and a correctly framed body.";
    UpstreamUnavailable => "UPSTREAM_UNAVAILABLE", 502,
        "The upstream service is unavailable. Please retry shortly.";
    UpstreamTimeout => "UPSTREAM_TIMEOUT", 504,
        "The upstream service did not answer in time. Please retry shortly.";
    ServiceUnavailable => "SERVICE_UNAVAILABLE", 503,
        "The service is temporarily unavailable. Please retry shortly.";
    PayloadTooLarge => "PAYLOAD_TOO_LARGE", 413,
        "The request body is too large.";
    HttpsRequired => "HTTPS_REQUIRED", 403,
        "This API is served over HTTPS only. Send the request to the https:// address.";
    // Control plane.
    ValidationError => "VALIDATION_ERROR", 422,
        "The request is not valid.";
    InvalidJson => "INVALID_JSON", 400,
        "The request body is not valid JSON.";
    UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE", 415,
        "Send the request body as JSON with Content-Type: application/json.";
    NotFound => "NOT_FOUND", 404,
        "Not found.";
    MethodNotAllowed => "METHOD_NOT_ALLOWED", 405,
        "This method is not allowed on this path.";
    Conflict => "CONFLICT", 409,
        "The request conflicts with the current state of the object.";
    Forbidden => "FORBIDDEN", 403,
        "This API key may not perform this operation.";
    InvalidConfig => "INVALID_CONFIG", 422,
        "The config file is not valid; the running config is unchanged.";
    ConfigNeedsRestart => "CONFIG_NEEDS_RESTART", 409,
        "Settings that cannot change while keygate runs were changed; the running config is unchanged. Restart to apply them.";
    InvalidSignature => "INVALID_SIGNATURE", 401,
        "The request's signature does not verify with any key this deployment trusts for it.";
    InternalError => "INTERNAL_ERROR", 500,
        "An unexpected error occurred. It has been logged.";
}

impl ErrorCode {
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Errors that answer "the key you sent is not usable" (RFC 6750 `invalid_token`).
    fn is_invalid_token(self) -> bool {
        matches!(self, Self::InvalidApiKey | Self::ApiKeyExpired | Self::ApiKeyRevoked)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body shape a deployment promises its clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorFormat {
    /// `{"success": false, "status", "code", "message", "data"?}`
    #[default]
    Envelope,
    /// `{"error": "<message>"}`
    Simple,
    /// RFC 9457 `application/problem+json`, with `code` as an extension member.
    Problem,
}

/// One error occurrence: the code plus what its message and data need.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorInstance {
    pub code: ErrorCode,
    /// Replaces `{scope}` in the message.
    pub scope: Option<String>,
    /// Replaces the message entirely (admin validation errors name the field).
    pub message: Option<String>,
    /// Boxed: most errors carry none, and rejections travel by value on the hot path.
    pub data: Option<Box<Map<String, Value>>>,
}

impl ErrorInstance {
    pub fn new(code: ErrorCode) -> Self {
        Self {
            code,
            scope: None,
            message: None,
            data: None,
        }
    }

    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    pub fn with_data(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.data
            .get_or_insert_with(Default::default)
            .insert(name.to_owned(), value.into());
        self
    }

    pub fn retry_after(&self) -> Option<u64> {
        self.data.as_ref()?.get("retry_after").and_then(Value::as_u64)
    }
}

impl From<ErrorCode> for ErrorInstance {
    fn from(code: ErrorCode) -> Self {
        Self::new(code)
    }
}

/// What the HTTP layer sends: status, headers and body, already decided.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedError {
    pub status: u16,
    pub code: ErrorCode,
    pub content_type: &'static str,
    pub www_authenticate: Option<String>,
    pub retry_after: Option<u64>,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CatalogError {
    #[error("errors.invalid_key_status must be 401 or 403, not {0}")]
    InvalidKeyStatus(u16),
    #[error("errors.usage_exceeded_status must be 402, 403 or 429, not {0}")]
    UsageExceededStatus(u16),
    #[error("errors.messages: unknown error code `{0}`")]
    UnknownCode(String),
    #[error("errors.realm must be printable ASCII without quotes or backslashes")]
    Realm,
    #[error("errors.bodies: unknown error code `{0}`")]
    UnknownBodyCode(String),
    #[error("errors.bodies.{code}: {reason}")]
    Body { code: String, reason: String },
}

/// Which `data` fields error bodies carry (`errors.data`): all (`true`, the
/// default), none (`false`: echowin's bare `{"error": ...}`), or the named
/// ones (`["retry_after"]`: EnvoyX's 429).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum DataFields {
    Switch(bool),
    Only(Vec<String>),
}

impl Default for DataFields {
    fn default() -> Self {
        Self::Switch(true)
    }
}

impl DataFields {
    fn keeps(&self, field: &str) -> bool {
        match self {
            Self::Switch(true) => true,
            Self::Switch(false) => false,
            Self::Only(fields) => fields.iter().any(|f| f == field),
        }
    }
}

/// The variables a body template may name (`errors.bodies`).
pub const BODY_VARIABLES: [&str; 8] = [
    "message",
    "code",
    "status",
    "retry_after",
    "limit",
    "window",
    "scope",
    "resource",
];

/// An operator's body for one code, byte for byte, with `{variable}`s.
/// Strings are inserted JSON-escaped (without quotes: the template has
/// them), numbers as they are, a variable the error lacks as `null`.
#[derive(Debug, Clone, PartialEq)]
struct BodyTemplate {
    /// Literal text and variables, in order.
    parts: Vec<TemplatePart>,
}

#[derive(Debug, Clone, PartialEq)]
enum TemplatePart {
    Text(String),
    Variable(&'static str),
}

impl BodyTemplate {
    /// `{name}` with `name` of lowercase letters and `_` is a variable, and
    /// must be one of [`BODY_VARIABLES`]; every other brace is JSON.
    fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            literal.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let name_len = after
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(after.len());
            if name_len > 0 && after[name_len..].starts_with('}') {
                let name = &after[..name_len];
                let known = BODY_VARIABLES
                    .iter()
                    .find(|v| **v == name)
                    .ok_or_else(|| format!("unknown variable {{{name}}}; known: {}", BODY_VARIABLES.join(", ")))?;
                parts.push(TemplatePart::Text(std::mem::take(&mut literal)));
                parts.push(TemplatePart::Variable(known));
                rest = &after[name_len + 1..];
            } else {
                literal.push('{');
                rest = after;
            }
        }
        literal.push_str(rest);
        parts.push(TemplatePart::Text(literal));
        let template = Self { parts };
        // Checked with sample values: a template that is not JSON fails at start.
        let sample = template.render(|name| Some(if name == "status" { "429".into() } else { "1".into() }));
        serde_json::from_slice::<Value>(&sample).map_err(|e| format!("is not JSON once filled in: {e}"))?;
        Ok(template)
    }

    fn render(&self, value_of: impl Fn(&str) -> Option<String>) -> Vec<u8> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                TemplatePart::Text(text) => out.push_str(text),
                TemplatePart::Variable(name) => out.push_str(&value_of(name).unwrap_or_else(|| "null".into())),
            }
        }
        out.into_bytes()
    }
}

/// A value as a template inserts it: a string's JSON escape without its
/// quotes, anything else as JSON.
fn template_value(value: &Value) -> String {
    match value {
        Value::String(text) => {
            let quoted = Value::String(text.clone()).to_string();
            quoted[1..quoted.len() - 1].to_owned()
        }
        other => other.to_string(),
    }
}

/// A deployment's error settings, validated once at start.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorCatalog {
    format: ErrorFormat,
    messages: HashMap<ErrorCode, String>,
    invalid_key_status: u16,
    usage_exceeded_status: u16,
    hide_key_state: bool,
    realm: String,
    data: DataFields,
    bodies: HashMap<ErrorCode, BodyTemplate>,
}

impl Default for ErrorCatalog {
    fn default() -> Self {
        Self {
            format: ErrorFormat::Envelope,
            messages: HashMap::new(),
            invalid_key_status: 401,
            usage_exceeded_status: 429,
            hide_key_state: false,
            realm: "keygate".to_owned(),
            data: DataFields::default(),
            bodies: HashMap::new(),
        }
    }
}

impl ErrorCatalog {
    pub fn new(
        format: ErrorFormat,
        messages: &HashMap<String, String>,
        invalid_key_status: u16,
        hide_key_state: bool,
        realm: &str,
    ) -> Result<Self, CatalogError> {
        if invalid_key_status != 401 && invalid_key_status != 403 {
            return Err(CatalogError::InvalidKeyStatus(invalid_key_status));
        }
        if realm.is_empty()
            || !realm
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            return Err(CatalogError::Realm);
        }
        let messages = messages
            .iter()
            .map(|(code, message)| {
                ErrorCode::parse(code)
                    .map(|c| (c, message.clone()))
                    .ok_or_else(|| CatalogError::UnknownCode(code.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            format,
            messages,
            invalid_key_status,
            usage_exceeded_status: 429,
            hide_key_state,
            realm: realm.to_owned(),
            data: DataFields::default(),
            bodies: HashMap::new(),
        })
    }

    /// `USAGE_EXCEEDED`'s status (`errors.usage_exceeded_status`): 429, or
    /// 402 (Payment Required) or 403 for a page that documents those.
    pub fn with_usage_exceeded_status(mut self, status: u16) -> Result<Self, CatalogError> {
        if ![402, 403, 429].contains(&status) {
            return Err(CatalogError::UsageExceededStatus(status));
        }
        self.usage_exceeded_status = status;
        Ok(self)
    }

    /// Which `data` fields bodies carry (`errors.data`).
    pub fn with_data_fields(mut self, data: DataFields) -> Self {
        self.data = data;
        self
    }

    /// Bodies given whole per code (`errors.bodies`), checked now: a known
    /// code, known variables, JSON once filled in.
    pub fn with_bodies(mut self, bodies: &HashMap<String, String>) -> Result<Self, CatalogError> {
        for (code, text) in bodies {
            let parsed = ErrorCode::parse(code).ok_or_else(|| CatalogError::UnknownBodyCode(code.clone()))?;
            let template = BodyTemplate::parse(text).map_err(|reason| CatalogError::Body {
                code: code.clone(),
                reason,
            })?;
            self.bodies.insert(parsed, template);
        }
        Ok(self)
    }

    pub fn format(&self) -> ErrorFormat {
        self.format
    }

    /// The same settings with another body format (the verify API always uses the envelope).
    pub fn with_format(mut self, format: ErrorFormat) -> Self {
        self.format = format;
        self
    }

    /// The code a client is shown: revoked and expired keys look invalid when
    /// the deployment prefers not to reveal that a key existed.
    pub fn public_code(&self, code: ErrorCode) -> ErrorCode {
        match code {
            ErrorCode::ApiKeyExpired | ErrorCode::ApiKeyRevoked if self.hide_key_state => ErrorCode::InvalidApiKey,
            other => other,
        }
    }

    pub fn status(&self, code: ErrorCode) -> u16 {
        match code {
            ErrorCode::InvalidApiKey => self.invalid_key_status,
            ErrorCode::UsageExceeded => self.usage_exceeded_status,
            other => other.default_status(),
        }
    }

    pub fn message(&self, error: &ErrorInstance) -> String {
        let code = self.public_code(error.code);
        if let Some(message) = &error.message {
            return message.clone();
        }
        let template = self.messages.get(&code).map_or(code.default_message(), String::as_str);
        template.replace("{scope}", error.scope.as_deref().unwrap_or("unknown"))
    }

    pub fn render(&self, error: &ErrorInstance) -> RenderedError {
        let code = self.public_code(error.code);
        let status = self.status(code);
        let message = self.message(error);
        let all_data = error.data.as_deref();
        let kept: Map<String, Value> = all_data
            .into_iter()
            .flatten()
            .filter(|(field, _)| self.data.keeps(field))
            .map(|(field, value)| (field.clone(), value.clone()))
            .collect();
        let data = &kept;
        let (content_type, body) = match (self.format, self.bodies.get(&code)) {
            (format, Some(template)) => {
                let content_type = match format {
                    ErrorFormat::Problem => "application/problem+json",
                    ErrorFormat::Envelope | ErrorFormat::Simple => "application/json",
                };
                let body = template.render(|name| match name {
                    "message" => Some(template_value(&Value::String(message.clone()))),
                    "code" => Some(code.as_str().to_owned()),
                    "status" => Some(status.to_string()),
                    "scope" => error.scope.clone().map(|s| template_value(&Value::String(s))),
                    field => all_data.and_then(|d| d.get(field)).map(template_value),
                });
                (content_type, body)
            }
            (ErrorFormat::Envelope, None) => ("application/json", envelope_body(status, code, &message, data)),
            (ErrorFormat::Simple, None) => ("application/json", simple_body(&message, data)),
            (ErrorFormat::Problem, None) => ("application/problem+json", problem_body(status, code, &message, data)),
        };
        RenderedError {
            status,
            code,
            content_type,
            www_authenticate: self.www_authenticate(status, code, error.scope.as_deref()),
            retry_after: error.retry_after(),
            body,
        }
    }

    /// RFC 6750: 401 always challenges; `invalid_token` when a key was sent;
    /// 403 for a missing scope says `insufficient_scope` and names it.
    fn www_authenticate(&self, status: u16, code: ErrorCode, scope: Option<&str>) -> Option<String> {
        let realm = &self.realm;
        if code == ErrorCode::InsufficientScope {
            let scope = scope.filter(|s| !s.contains('"')).unwrap_or_default();
            return Some(format!(
                r#"Bearer realm="{realm}", error="insufficient_scope", scope="{scope}""#
            ));
        }
        if status != 401 {
            return None;
        }
        if code.is_invalid_token() {
            Some(format!(r#"Bearer realm="{realm}", error="invalid_token""#))
        } else {
            Some(format!(r#"Bearer realm="{realm}""#))
        }
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    success: bool,
    status: u16,
    code: ErrorCode,
    message: &'a str,
    #[serde(skip_serializing_if = "Map::is_empty")]
    data: &'a Map<String, Value>,
}

#[derive(Serialize)]
struct Simple<'a> {
    error: &'a str,
    #[serde(flatten)]
    data: &'a Map<String, Value>,
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    status: u16,
    detail: &'a str,
    code: ErrorCode,
    #[serde(flatten)]
    data: &'a Map<String, Value>,
}

fn envelope_body(status: u16, code: ErrorCode, message: &str, data: &Map<String, Value>) -> Vec<u8> {
    to_json(&Envelope {
        success: false,
        status,
        code,
        message,
        data,
    })
}

fn simple_body(message: &str, data: &Map<String, Value>) -> Vec<u8> {
    to_json(&Simple { error: message, data })
}

fn problem_body(status: u16, code: ErrorCode, message: &str, data: &Map<String, Value>) -> Vec<u8> {
    to_json(&Problem {
        kind: "about:blank",
        title: reason_phrase(status),
        status,
        detail: message,
        code,
        data,
    })
}

fn to_json(value: &impl Serialize) -> Vec<u8> {
    // These structs hold only strings, numbers and JSON values: serialising cannot fail.
    serde_json::to_vec(value).unwrap_or_else(|_| br#"{"error":"internal error"}"#.to_vec())
}

/// RFC 9457 says a problem with type `about:blank` has the status's phrase as title.
fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Internal Server Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn every_code_round_trips_and_has_a_message() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert_eq!(serde_json::to_value(code).unwrap(), Value::String(code.as_str().into()));
            assert!(!code.default_message().is_empty());
            assert_ne!(reason_phrase(code.default_status()), "", "{code}");
        }
    }

    #[test]
    fn envelope_matches_the_contract() {
        let catalog = ErrorCatalog::default();
        let rendered =
            catalog.render(&ErrorInstance::new(ErrorCode::TooManyFailedAttempts).with_data("retry_after", 60));
        assert_eq!(rendered.status, 429);
        assert_eq!(rendered.retry_after, Some(60));
        assert_eq!(
            json(&rendered.body),
            serde_json::json!({"success": false, "status": 429, "code": "TOO_MANY_FAILED_ATTEMPTS",
                "message": ErrorCode::TooManyFailedAttempts.default_message(), "data": {"retry_after": 60}})
        );
    }

    fn rate_limited() -> ErrorInstance {
        ErrorInstance::new(ErrorCode::RateLimitExceeded)
            .with_data("retry_after", 60)
            .with_data("limit", 100)
            .with_data("window", "1m")
    }

    #[test]
    fn data_fields_can_be_dropped_or_chosen() {
        let messages = HashMap::from([(
            "RATE_LIMIT_EXCEEDED".to_string(),
            "Rate limit exceeded. Please try again later.".to_string(),
        )]);
        let bare = ErrorCatalog::new(ErrorFormat::Simple, &messages, 401, false, "k")
            .unwrap()
            .with_data_fields(DataFields::Switch(false));
        let rendered = bare.render(&rate_limited());
        assert_eq!(
            String::from_utf8(rendered.body).unwrap(),
            r#"{"error":"Rate limit exceeded. Please try again later."}"#
        );
        assert_eq!(rendered.retry_after, Some(60), "Retry-After stays");
        let chosen = ErrorCatalog::default().with_data_fields(DataFields::Only(vec!["retry_after".into()]));
        assert_eq!(
            json(&chosen.render(&rate_limited()).body)["data"],
            serde_json::json!({"retry_after": 60})
        );
    }

    #[test]
    fn a_body_template_gives_the_bytes_with_its_variables_filled_in() {
        let bodies = HashMap::from([(
            "RATE_LIMIT_EXCEEDED".to_string(),
            "{\n  \"error\": \"{message}\", \"wait\": {retry_after}, \"scope\": \"{scope}\"\n}".to_string(),
        )]);
        let catalog = ErrorCatalog::default()
            .with_bodies(&bodies)
            .unwrap()
            .with_data_fields(DataFields::Switch(false));
        let rendered = catalog.render(&rate_limited().with_message("Slow \"down\""));
        assert_eq!(
            String::from_utf8(rendered.body).unwrap(),
            "{\n  \"error\": \"Slow \\\"down\\\"\", \"wait\": 60, \"scope\": \"null\"\n}",
            "strings escaped, numbers as they are, missing as null; data = false does not hide variables"
        );
        assert_eq!(rendered.content_type, "application/json");
        // Another code keeps the format's body.
        assert_eq!(
            json(&catalog.render(&ErrorCode::MissingApiKey.into()).body)["code"],
            "MISSING_API_KEY"
        );
    }

    #[test]
    fn bad_body_templates_are_refused_naming_the_code() {
        let refused = |code: &str, text: &str| {
            ErrorCatalog::default()
                .with_bodies(&HashMap::from([(code.to_string(), text.to_string())]))
                .unwrap_err()
                .to_string()
        };
        assert!(refused("NOT_A_CODE", "{}").contains("NOT_A_CODE"));
        let unknown = refused("RATE_LIMIT_EXCEEDED", r#"{"e": "{mesage}"}"#);
        assert!(
            unknown.contains("RATE_LIMIT_EXCEEDED") && unknown.contains("{mesage}"),
            "{unknown}"
        );
        assert!(refused("RATE_LIMIT_EXCEEDED", r#"{"e": {message}"#).contains("not JSON"));
    }

    #[test]
    fn simple_format_and_overridden_messages_reproduce_a_seed() {
        let messages = HashMap::from([("MISSING_API_KEY".to_string(), "Missing X-API-Key header".to_string())]);
        let catalog = ErrorCatalog::new(ErrorFormat::Simple, &messages, 401, false, "keygate").unwrap();
        let rendered = catalog.render(&ErrorCode::MissingApiKey.into());
        assert_eq!(
            json(&rendered.body),
            serde_json::json!({"error": "Missing X-API-Key header"})
        );
        assert_eq!(rendered.www_authenticate.as_deref(), Some(r#"Bearer realm="keygate""#));
    }

    #[test]
    fn hidden_key_state_answers_invalid_with_the_configured_status() {
        let catalog = ErrorCatalog::new(ErrorFormat::Envelope, &HashMap::new(), 403, true, "keygate").unwrap();
        let rendered = catalog.render(&ErrorCode::ApiKeyRevoked.into());
        assert_eq!((rendered.status, rendered.code), (403, ErrorCode::InvalidApiKey));
        assert_eq!(rendered.www_authenticate, None);
    }

    #[test]
    fn problem_format_has_code_extension_and_scope_challenge() {
        let catalog = ErrorCatalog::new(ErrorFormat::Problem, &HashMap::new(), 401, false, "api").unwrap();
        let rendered = catalog.render(&ErrorInstance::new(ErrorCode::InsufficientScope).with_scope("invoices:write"));
        assert_eq!(rendered.content_type, "application/problem+json");
        let body = json(&rendered.body);
        assert_eq!(body["code"], "INSUFFICIENT_SCOPE");
        assert_eq!(body["title"], "Forbidden");
        assert!(body["detail"].as_str().unwrap().contains("invoices:write"));
        assert_eq!(
            rendered.www_authenticate.as_deref(),
            Some(r#"Bearer realm="api", error="insufficient_scope", scope="invoices:write""#)
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        let none = HashMap::new();
        assert_eq!(
            ErrorCatalog::new(ErrorFormat::Simple, &none, 500, false, "k"),
            Err(CatalogError::InvalidKeyStatus(500))
        );
        let unknown = HashMap::from([("NOPE".to_string(), "x".to_string())]);
        assert_eq!(
            ErrorCatalog::new(ErrorFormat::Simple, &unknown, 401, false, "k"),
            Err(CatalogError::UnknownCode("NOPE".into()))
        );
    }
}
