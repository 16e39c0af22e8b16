//! keygate-client against a real node started in this process: the typed
//! client's walk-through, the client checked against the served OpenAPI
//! document, and the example service behind the tower layer.

// Test code: a failed expectation should panic where it happened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod document;
#[cfg(feature = "embedded")]
mod embedded;
mod layer;

use std::sync::Arc;

use keygate_client::{Client, Error, ErrorCode, NewKey, NewWorkspace, Verify};
use keygate_engine::SystemClock;
use keygate_server::{App, ConfigSource};
use secrecy::ExposeSecret;

/// One keygate node on loopback, on its own SQLite file.
pub struct Node {
    pub app: App,
    pub admin: String,
    pub admin_key: String,
    _dir: tempfile::TempDir,
}

impl Node {
    pub async fn start() -> Self {
        Self::start_with("").await
    }

    /// A node whose config file ends with `toml`.
    pub async fn start_with(toml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("keygate.toml");
        let text = format!(
            "[server]\ngateway_addr = \"127.0.0.1:0\"\nadmin_addr = \"127.0.0.1:0\"\n\
             [store]\nurl = \"sqlite://{}/keygate.db\"\n[access_log]\ntarget = \"off\"\n{toml}",
            dir.path().display()
        );
        std::fs::write(&config, text).unwrap();
        let loaded = ConfigSource::file(Some(config)).load().unwrap();
        let store = keygate_store::open(&loaded.settings.store_url).await.unwrap();
        let app = App::start(loaded, store, Arc::new(SystemClock)).await.unwrap();
        let (_, admin_key) = app.engine.admin().create_admin_key("client tests").await.unwrap();
        Self {
            admin: format!("http://{}", app.admin_addr),
            admin_key: admin_key.expose().to_owned(),
            app,
            _dir: dir,
        }
    }

    pub fn client(&self) -> Client {
        Client::new(&self.admin, &self.admin_key)
    }
}

#[tokio::test]
async fn the_client_runs_the_walk_through_and_refusals_carry_their_code() {
    let node = Node::start().await;
    let client = node.client();
    let workspace = client
        .create_workspace(&NewWorkspace {
            name: "Acme".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(client.get_workspace(&workspace.id).await.unwrap(), workspace);
    let created = client
        .create_key(
            &workspace.id,
            &NewKey {
                name: "Production Server".into(),
                scopes: vec!["invoices:read".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let key = created.key.expose_secret().to_owned();
    assert!(key.starts_with("kg_live_"));
    assert!(!format!("{created:?}").contains(&key), "Debug never shows the key");

    let mut check = Verify::new(key.clone());
    check.scopes = vec!["invoices:read".into()];
    let verified = client.verify(&check).await.unwrap();
    assert_eq!(
        (verified.key.id.as_str(), verified.workspace.id.as_str()),
        (created.details.id.as_str(), workspace.id.as_str())
    );

    check.scopes = vec!["invoices:write".into()];
    let refused = client.verify(&check).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::InsufficientScope), "{refused}");

    let rotated = client.rotate_key(&created.details.id, Some("1h")).await.unwrap();
    assert_eq!(
        rotated.details.rotated_from.as_deref(),
        Some(created.details.id.as_str())
    );
    let revoked = client.revoke_key(&rotated.details.id, Some("leaked")).await.unwrap();
    assert_eq!(
        (revoked.status.as_str(), revoked.revoked_reason.as_deref()),
        ("revoked", Some("leaked"))
    );
    let refused = client
        .verify(&Verify::new(rotated.key.expose_secret().to_owned()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::ApiKeyRevoked));
    let Error::Api(api) = refused else { panic!("a refusal") };
    assert_eq!(api.status, 401);

    let listed = client.list_keys(&workspace.id, None).await.unwrap();
    assert_eq!(listed.data.len(), 2);
    assert!(client.key_usage(&created.details.id, "hour").await.is_ok());
    let missing = client.get_key("key_01m80000000000000000000000").await.unwrap_err();
    assert_eq!(missing.code(), Some(ErrorCode::NotFound));

    let wrong = Client::new(&node.admin, "kg_admin_wrong")
        .get_workspace(&workspace.id)
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Some(ErrorCode::InvalidApiKey));
    node.app.shutdown().await;
    let gone = client.get_workspace(&workspace.id).await.unwrap_err();
    assert!(matches!(gone, Error::Unreachable(_)) && gone.is_unavailable(), "{gone}");
}
