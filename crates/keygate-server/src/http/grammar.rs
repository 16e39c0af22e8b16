//! The admin API's text fields as the OpenAPI document states them, with
//! the patterns of crates/keygate-core/src/grammar.rs, so a client (or a
//! fuzzer such as schemathesis) that follows the document is never refused
//! for the shape of a value.
//!
//! The validators stay the truth: scopes (crates/keygate-core/src/scope.rs),
//! IP allowlists (crates/keygate-core/src/ip.rs), resources and windows
//! (crates/keygate-core/src/limits.rs), durations
//! (crates/keygate-core/src/duration.rs) and webhook URLs
//! (crates/keygate-engine/src/webhooks.rs). The tests below check every
//! pattern against them with strings generated from the pattern itself.

use keygate_core::grammar::*;
use utoipa::openapi::schema::{Array, ArrayBuilder, Object, ObjectBuilder, SchemaType, Type};

// ----- `schema_with` functions: utoipa takes a pattern only as a literal,
// and has no attribute for an array's items. `_or_null` for the optional
// fields, which take `null` as absent.

fn text(pattern: impl Into<String>, description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .description(Some(description))
}

fn text_or_null(builder: ObjectBuilder) -> Object {
    builder
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .build()
}

fn list_or_null(builder: ArrayBuilder) -> Array {
    builder
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .build()
}

fn named() -> ObjectBuilder {
    text(NAME, "1 to 200 characters, not only spaces, no control characters.")
        .min_length(Some(1))
        .max_length(Some(200))
}

pub fn name() -> Object {
    named().build()
}

pub fn name_or_null() -> Object {
    text_or_null(named())
}

pub fn window() -> Object {
    text(POSITIVE_DURATION, "The window: `1s`, `15m`, `1h`, `1d`, `30d`.").build()
}

pub fn expires_in_or_null() -> Object {
    text_or_null(text(
        POSITIVE_DURATION,
        "A duration such as `90d`; exclusive with `expires_at`.",
    ))
}

pub fn grace_or_null() -> Object {
    text_or_null(text(
        DURATION,
        "How long the old key keeps working: `0`, `1h`, `24h` (default), `7d`.",
    ))
}

fn resource_text() -> ObjectBuilder {
    text(RESOURCE, "What a limit counts; routes name their resource.")
}

pub fn resource() -> Object {
    resource_text().default(Some("default".into())).build()
}

pub fn resource_or_null() -> Object {
    text_or_null(resource_text())
}

pub fn ip_or_null() -> Object {
    text_or_null(text(
        ip_address(),
        "The client's IP, checked against allowlists. Without it, keys with an allowlist are refused.",
    ))
}

pub fn webhook_url_text() -> Object {
    text(
        webhook_url(),
        "Where deliveries are POSTed: an `http://` or `https://` URL.",
    )
    .max_length(Some(keygate_engine::webhooks::MAX_URL_LEN))
    .build()
}

fn scope_list() -> ArrayBuilder {
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(keygate_core::scope::MAX_SCOPE_LEN))
                .pattern(Some(SCOPE)),
        )
        .max_items(Some(keygate_core::scope::MAX_SCOPES))
        .description(Some(
            "`invoices:read`, `invoices:*` or `*`; empty means full access to the workspace.",
        ))
}

fn role_list() -> ArrayBuilder {
    ArrayBuilder::new()
        .items(ObjectBuilder::new().schema_type(Type::String).pattern(Some(ROLE)))
        .max_items(Some(keygate_core::role::MAX_KEY_ROLES))
        .description(Some(
            "Names of the config's `[roles]`; the key is granted its scopes and every scope of its roles.",
        ))
}

pub fn roles() -> Array {
    role_list().build()
}

pub fn roles_or_null() -> Array {
    list_or_null(role_list())
}

pub fn scopes() -> Array {
    scope_list().build()
}

pub fn scopes_or_null() -> Array {
    list_or_null(scope_list())
}

fn allowlist() -> ArrayBuilder {
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(ip_or_cidr())),
        )
        .max_items(Some(keygate_core::ip::MAX_ALLOWLIST_ENTRIES))
        .description(Some(
            "Addresses and CIDR blocks, IPv4 or IPv6; empty allows every address.",
        ))
}

pub fn ip_allowlist() -> Array {
    allowlist().build()
}

pub fn ip_allowlist_or_null() -> Array {
    list_or_null(allowlist())
}

pub fn resources_or_null() -> Array {
    list_or_null(
        ArrayBuilder::new()
            .items(resource_text())
            .min_items(Some(1))
            .max_items(Some(16))
            .description(Some(
                "Several resources, every limit of each decided as one (as a route's `resources`); instead of `resource`.",
            )),
    )
}

/// The event type names, so a client knows exactly which the API accepts.
pub fn event_types() -> Array {
    use keygate_core::events::EventType;
    let names = EventType::ALL.iter().map(|kind| kind.as_str());
    ArrayBuilder::new()
        .items(ObjectBuilder::new().schema_type(Type::String).enum_values(Some(names)))
        .description(Some("Event types to receive; empty or absent for all."))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_core::limits::{validate_limits, LimitSpec};
    use proptest::prelude::*;
    use proptest::string::string_regex;

    fn from(pattern: &str) -> impl Strategy<Value = String> {
        // The anchors are the document's; the generator needs none.
        let bare = pattern.trim_start_matches('^').trim_end_matches('$');
        string_regex(bare).expect("the pattern is one the regex crate reads")
    }

    fn limit(resource: &str, per: &str) -> LimitSpec {
        LimitSpec {
            resource: resource.to_owned(),
            requests: 1,
            per: per.to_owned(),
            scope: Default::default(),
            mode: Default::default(),
        }
    }

    proptest! {
        #[test]
        fn every_scope_the_document_allows_is_accepted(scope in from(SCOPE)) {
            prop_assume!(scope.len() <= keygate_core::scope::MAX_SCOPE_LEN);
            prop_assert!(keygate_core::scope::validate_scopes(std::slice::from_ref(&scope)).is_ok(), "{}", scope);
        }

        #[test]
        fn every_resource_and_window_the_document_allows_is_accepted(
            resource in from(RESOURCE),
            per in from(POSITIVE_DURATION),
        ) {
            prop_assert!(validate_limits(&[limit(&resource, &per)]).is_ok(), "{} {}", resource, per);
        }

        #[test]
        fn a_wait_parses_exactly_when_the_document_allows_it(text in "[0-9]{0,6}(m?s)?") {
            let allowed = regex::Regex::new(WAIT).unwrap().is_match(&text);
            prop_assert_eq!(keygate_core::duration::parse_wait(&text).is_some(), allowed, "{}", text);
        }

        #[test]
        fn every_wait_the_document_allows_parses(text in from(WAIT)) {
            prop_assert!(keygate_core::duration::parse_wait(&text).is_some(), "{}", text);
        }

        #[test]
        fn a_changes_cursor_parses_exactly_when_the_document_allows_it(text in "[a-z0-9_.A-]{0,8}\\.?[0-9x]{0,21}") {
            let allowed = regex::Regex::new(keygate_engine::admin::CURSOR_PATTERN).unwrap().is_match(&text);
            prop_assert_eq!(keygate_engine::admin::parse_cursor(&text).is_some(), allowed, "{}", text);
        }

        #[test]
        fn every_changes_cursor_the_document_allows_parses(text in from(keygate_engine::admin::CURSOR_PATTERN)) {
            prop_assert!(keygate_engine::admin::parse_cursor(&text).is_some(), "{}", text);
        }

        #[test]
        fn every_duration_the_document_allows_parses(duration in from(DURATION)) {
            prop_assert!(keygate_core::duration::parse_duration(&duration).is_ok(), "{}", duration);
        }

        #[test]
        fn every_address_and_block_the_document_allows_is_accepted(entry in from(&ip_or_cidr())) {
            prop_assert!(keygate_core::ip::IpAllowlist::parse(std::slice::from_ref(&entry)).is_ok(), "{}", entry);
        }

        #[test]
        fn every_address_the_document_allows_parses(ip in from(&ip_address())) {
            prop_assert!(ip.parse::<std::net::IpAddr>().is_ok(), "{}", ip);
        }

        #[test]
        fn every_webhook_url_the_document_allows_is_accepted(url in from(&webhook_url())) {
            prop_assume!(url.len() <= keygate_engine::webhooks::MAX_URL_LEN);
            prop_assert!(keygate_engine::webhooks::validate_url(&url).is_ok(), "{}", url);
        }
    }

    #[test]
    fn the_patterns_refuse_what_the_validators_refuse() {
        let refused = |pattern: &str, text: &str| !regex::Regex::new(pattern).unwrap().is_match(text);
        for scope in ["", "a::b", "*:a", "a b", "a:*:b"] {
            assert!(refused(SCOPE, scope), "{scope}");
        }
        for entry in ["10.0.0.0/33", "256.1.1.1", "1:2:3:4:5:6:7:8:9", "::1/129", "not-an-ip"] {
            assert!(refused(&ip_or_cidr(), entry), "{entry}");
        }
        for url in [
            "ftp://a.example",
            "http://1.999/",
            "http://xn--a.example/",
            "https://u@h.example/",
        ] {
            assert!(refused(&webhook_url(), url), "{url}");
        }
        assert!(refused(POSITIVE_DURATION, "0s") && refused(DURATION, "60"));
    }
}
