//! The client matches the document a node serves: every call it makes is
//! an operation there, and every field it sends or reads is a property of
//! that operation's schema, so a change to the API that the client does
//! not follow fails here.

use std::collections::BTreeSet;

use keygate_client::{Key, KeyChanges, LimitState, NewKey, NewWorkspace, Verified, VerifiedKey, Workspace, OPERATIONS};
use serde::Serialize;
use serde_json::{json, Value};

use crate::Node;

/// The properties of a component, with those of what it is made of (`allOf`).
fn properties(document: &Value, schema: &Value) -> BTreeSet<String> {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let name = reference.rsplit('/').next().unwrap();
        return properties(document, &document["components"]["schemas"][name]);
    }
    let mut found: BTreeSet<String> = schema["properties"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        found.extend(properties(document, part));
    }
    found
}

fn component(document: &Value, name: &str) -> BTreeSet<String> {
    properties(document, &json!({"$ref": format!("#/components/schemas/{name}")}))
}

fn fields_of(value: &impl Serialize) -> BTreeSet<String> {
    serde_json::to_value(value)
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

fn assert_within(what: &str, fields: BTreeSet<String>, document: BTreeSet<String>) {
    let unknown: Vec<&String> = fields.difference(&document).collect();
    assert!(
        unknown.is_empty(),
        "{what}: {unknown:?} are not in the document ({document:?})"
    );
}

#[tokio::test]
async fn the_client_matches_the_served_document() {
    let node = Node::start().await;
    let document: Value = reqwest::get(format!("{}/openapi.json", node.admin))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (method, path) in OPERATIONS {
        assert!(
            document["paths"][path][method].is_object(),
            "{method} {path} is not in the document"
        );
    }
    let now = chrono::Utc::now();
    let workspace = Workspace {
        id: String::new(),
        name: String::new(),
        plan: None,
        ip_allowlist: vec![],
        disabled: false,
        created_at: now,
        updated_at: now,
    };
    assert_within(
        "Workspace",
        fields_of(&workspace),
        component(&document, "WorkspaceView"),
    );
    let key = Key {
        id: String::new(),
        workspace_id: String::new(),
        name: String::new(),
        environment: String::new(),
        masked: String::new(),
        status: String::new(),
        scopes: vec![],
        roles: vec![],
        ip_allowlist: vec![],
        expires_at: None,
        metadata: Default::default(),
        created_at: now,
        revoked_at: None,
        revoked_reason: None,
        rotated_from: None,
        rotated_to: None,
        legacy: false,
    };
    assert_within("Key", fields_of(&key), component(&document, "KeyView"));
    let mut created = fields_of(&key);
    created.insert("key".into());
    assert_within("CreatedKey", created, component(&document, "CreatedKey"));
    let verified_key = VerifiedKey {
        id: String::new(),
        name: String::new(),
        environment: String::new(),
        masked: String::new(),
        scopes: vec![],
        roles: vec![],
        metadata: Default::default(),
        expires_at: None,
    };
    assert_within("VerifiedKey", fields_of(&verified_key), component(&document, "KeyView"));
    let limit = LimitState {
        resource: String::new(),
        limit: 1,
        window: String::new(),
        remaining: 1,
        reset: 1,
    };
    assert_within("LimitState", fields_of(&limit), component(&document, "LimitView"));
    let verified = Verified {
        valid: true,
        key: verified_key,
        workspace: keygate_client::WorkspaceSummary {
            id: String::new(),
            name: String::new(),
            plan: None,
        },
        ratelimit: keygate_client::RateLimits { limits: vec![] },
    };
    assert_within("Verified", fields_of(&verified), component(&document, "VerifyResult"));
    assert_within(
        "WorkspaceSummary",
        fields_of(&verified.workspace),
        component(&document, "WorkspaceSummary"),
    );

    // What the client sends, with every field set.
    let new_workspace = NewWorkspace {
        name: "n".into(),
        plan: Some("p".into()),
        ip_allowlist: vec!["10.0.0.0/8".into()],
    };
    assert_within(
        "NewWorkspace",
        fields_of(&new_workspace),
        component(&document, "CreateWorkspace"),
    );
    let new_key = NewKey {
        name: "n".into(),
        environment: Some("live".into()),
        scopes: vec!["a".into()],
        roles: vec!["r".into()],
        expires_in: Some("1d".into()),
        ip_allowlist: vec!["10.0.0.0/8".into()],
        metadata: Some(Default::default()),
    };
    assert_within("NewKey", fields_of(&new_key), component(&document, "CreateKey"));
    let mut verify = keygate_client::Verify::new("kg_live_x");
    verify.scopes = vec!["a".into()];
    verify.resource = Some("r".into());
    verify.ip = Some("10.0.0.1".into());
    verify.dry_run = true;
    verify.gateway_errors = true;
    assert_within("Verify", fields_of(&verify), component(&document, "VerifyKey"));
    let changes = KeyChanges {
        cursor: String::new(),
        reset: true,
        key_hashes: vec![],
    };
    assert_within(
        "KeyChanges",
        fields_of(&changes),
        component(&document, "KeyChangesView"),
    );
    assert_within(
        "rotate",
        BTreeSet::from(["grace".to_owned()]),
        component(&document, "RotateKey"),
    );
    assert_within(
        "revoke",
        BTreeSet::from(["reason".to_owned()]),
        component(&document, "RevokeKey"),
    );
}
