//! Audit events, the outbox, webhook deliveries and lifecycle events.

use super::*;

pub async fn audit_events_filter_by_workspace_and_key(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    let (other_ws, _) = workspace_with_key(store.as_ref()).await;
    let by_ws = store
        .list_audit_events(
            &AuditFilter {
                workspace_id: Some(ws.id.clone()),
                key_id: None,
            },
            &Page::first(50),
        )
        .await
        .unwrap();
    let actions: Vec<_> = by_ws.items.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["key.created", "workspace.created"]);
    assert!(by_ws
        .items
        .iter()
        .all(|e| e.workspace_id.as_deref() == Some(ws.id.as_str())));
    let by_key = store
        .list_audit_events(
            &AuditFilter {
                workspace_id: None,
                key_id: Some(key.id.clone()),
            },
            &Page::first(50),
        )
        .await
        .unwrap();
    assert_eq!(by_key.items.len(), 1);
    assert_eq!(by_key.items[0].actor_ip.as_deref(), Some("127.0.0.1"));
    assert_ne!(other_ws.id, ws.id);
}

pub async fn published_changes_enter_the_outbox_with_them(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    let mut renamed = key.clone();
    renamed.name = "renamed".into();
    store
        .update_key(&renamed, &audit("key.updated", &key.id, Some(&ws.id)))
        .await
        .unwrap();
    let mut revoke = audit("key.revoked", &key.id, Some(&ws.id));
    revoke.details = serde_json::json!({"reason": "leaked"});
    store.revoke_key(&key.id, now(), Some("leaked"), &revoke).await.unwrap();
    // A second revoke changes nothing, so it publishes nothing.
    store
        .revoke_key(&key.id, now(), None, &audit("key.revoked", &key.id, Some(&ws.id)))
        .await
        .unwrap();
    let filter = EventListFilter {
        workspace_id: Some(ws.id.clone()),
        subject: None,
    };
    let events = store.list_events(&filter, &Page::first(50)).await.unwrap().items;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["key.revoked", "key.created"], "key.updated is not published");
    let revoked: serde_json::Value = serde_json::from_str(&events[0].body).unwrap();
    assert_eq!(revoked["type"], "key.revoked");
    assert_eq!(revoked["data"]["key_id"], key.id.as_str());
    assert_eq!(revoked["data"]["reason"], "leaked");
    assert_eq!(events[0].id, format!("msg_{}", &revoke.id["evt_".len()..]));
    // A change that fails writes no event.
    let err = store
        .insert_key(&key, &audit("key.created", &key.id, Some(&ws.id)))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(
        store.list_events(&filter, &Page::first(50)).await.unwrap().items.len(),
        2
    );
}

/// An audit event on its own: stored, and published when its action is.
pub async fn a_lone_audit_event_is_stored_and_published_as_its_action_says(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    let mut leaked = audit("key.leaked", &key.id, Some(&ws.id));
    leaked.details = serde_json::json!({"url": "https://example.com/x", "action": "none"});
    store.record_audit(&leaked).await.unwrap();
    store.record_audit(&audit("leak.reported", "", None)).await.unwrap();
    let all = store
        .list_audit_events(&AuditFilter::default(), &Page::first(50))
        .await
        .unwrap()
        .items;
    let actions: Vec<&str> = all.iter().map(|e| e.action.as_str()).collect();
    assert!(actions.starts_with(&["leak.reported", "key.leaked"]), "{actions:?}");
    let filter = EventListFilter {
        workspace_id: Some(ws.id.clone()),
        subject: None,
    };
    let events = store.list_events(&filter, &Page::first(50)).await.unwrap().items;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["key.leaked", "key.created"]);
}

fn new_event(kind: EventType, subject: &str, at: DateTime<Utc>) -> NewEvent {
    NewEvent {
        id: new_id("msg", at, &mut rand::thread_rng()),
        kind,
        at,
        workspace_id: Some("ws_events".into()),
        subject: Some(subject.into()),
        dedup_key: None,
        quiet_since: None,
        body: "{}".into(),
    }
}

pub async fn events_are_deduplicated_and_quieted(store: Arc<dyn Store>) {
    let t0 = now();
    let mut first = new_event(EventType::RateLimitExceeded, "key_a", t0);
    first.dedup_key = Some("ratelimit.exceeded:key_a:60000:1".into());
    let mut again = new_event(EventType::RateLimitExceeded, "key_a", t0);
    again.dedup_key = first.dedup_key.clone();
    assert_eq!(store.insert_events(&[first.clone(), again]).await.unwrap(), 1);
    assert_eq!(store.insert_events(std::slice::from_ref(&first)).await.unwrap(), 0);

    let anomaly = |at: DateTime<Utc>| NewEvent {
        quiet_since: Some(at - Duration::hours(1)),
        ..new_event(EventType::UsageAnomaly, "key_a", at)
    };
    assert_eq!(store.insert_events(&[anomaly(t0)]).await.unwrap(), 1);
    assert_eq!(
        store
            .insert_events(&[anomaly(t0 + Duration::minutes(59))])
            .await
            .unwrap(),
        0
    );
    let other_key = NewEvent {
        quiet_since: Some(t0),
        ..new_event(EventType::UsageAnomaly, "key_b", t0)
    };
    assert_eq!(store.insert_events(&[other_key]).await.unwrap(), 1);
    assert_eq!(
        store
            .insert_events(&[anomaly(t0 + Duration::minutes(61))])
            .await
            .unwrap(),
        1
    );
    let filter = EventListFilter {
        workspace_id: None,
        subject: Some("key_a".into()),
    };
    let mut kinds: Vec<String> = store
        .list_events(&filter, &Page::first(50))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| e.kind)
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["ratelimit.exceeded", "usage.anomaly", "usage.anomaly"]);
}

/// The store keeps what it is given; the engine seals secrets before.
fn sealed_secret(endpoint_id: &str) -> StoredSecret {
    let mut rng = rand::thread_rng();
    let keyring = Keyring::parse(&Keyring::generate_key(&mut rng)).unwrap();
    keyring.seal(b"whsec_dGVzdA==", endpoint_id, &mut rng)
}

fn endpoint(workspace_id: Option<&str>, events: &[&str], created_at: DateTime<Utc>) -> WebhookEndpoint {
    let id = new_id("wh", created_at, &mut rand::thread_rng());
    WebhookEndpoint {
        secret: sealed_secret(&id),
        id,
        workspace_id: workspace_id.map(str::to_owned),
        url: "http://127.0.0.1:9/hook".into(),
        events: EventFilter::parse(events).unwrap(),
        description: None,
        created_at,
        created_by: Some("testsuite".into()),
    }
}

fn attempt(number: u32, at: DateTime<Utc>, status_code: Option<u16>) -> DeliveryAttempt {
    DeliveryAttempt {
        attempt: number,
        at,
        status_code,
        error: status_code.is_none().then(|| "connection refused".to_owned()),
        duration_ms: 3,
    }
}

pub async fn webhook_deliveries_fan_out_lease_and_finish_once(store: Arc<dyn Store>) {
    let t0 = now() - Duration::seconds(5);
    let ws = sample_workspace("Hooks");
    store
        .insert_workspace(&ws, &audit("workspace.created", &ws.id, Some(&ws.id)))
        .await
        .unwrap();
    let global = endpoint(None, &[], t0);
    let own = endpoint(Some(&ws.id), &["key.created"], t0);
    let filtered_out = endpoint(Some(&ws.id), &["key.revoked"], t0);
    let other_ws = endpoint(Some("ws_someone_else"), &[], t0);
    for hook in [&global, &own, &filtered_out, &other_ws] {
        let audit = audit("webhook.created", &hook.id, hook.workspace_id.as_deref());
        store.insert_webhook(hook, &audit).await.unwrap();
    }
    let secret_back = store.get_webhook(&own.id).await.unwrap().unwrap();
    assert_eq!(secret_back, own);
    let key = sample_key(&ws.id, "k");
    store
        .insert_key(&key, &audit("key.created", &key.id, Some(&ws.id)))
        .await
        .unwrap();
    // Fanned out once, however often asked (two nodes, or a retry).
    let now = now();
    assert_eq!(
        store.fan_out_events(now, 100).await.unwrap(),
        2,
        "the global and the own endpoint"
    );
    assert_eq!(store.fan_out_events(now, 100).await.unwrap(), 0);

    let lease_end = now + Duration::seconds(30);
    let claimed = store.claim_deliveries(now, lease_end, "node_a", 10).await.unwrap();
    assert_eq!(claimed.len(), 2);
    assert!(claimed
        .iter()
        .all(|c| c.attempts == 0 && c.body.contains("key.created")));
    let to_own = claimed.iter().find(|c| c.endpoint_id == own.id).unwrap();
    assert_eq!(to_own.secret, own.secret);
    // Leased: another node gets nothing until the lease ends.
    assert!(store
        .claim_deliveries(now, lease_end, "node_b", 10)
        .await
        .unwrap()
        .is_empty());
    // Only the lease holder writes the result.
    let retry_at = now + Duration::seconds(60);
    assert!(!store
        .finish_delivery(
            &to_own.id,
            "node_b",
            &attempt(1, now, Some(500)),
            DeliveryNext::RetryAt(retry_at)
        )
        .await
        .unwrap());
    assert!(store
        .finish_delivery(
            &to_own.id,
            "node_a",
            &attempt(1, now, Some(500)),
            DeliveryNext::RetryAt(retry_at)
        )
        .await
        .unwrap());
    let to_global = claimed.iter().find(|c| c.endpoint_id == global.id).unwrap();
    assert!(store
        .finish_delivery(
            &to_global.id,
            "node_a",
            &attempt(1, now, Some(204)),
            DeliveryNext::Delivered
        )
        .await
        .unwrap());
    // Not due before its retry time; due after, with its attempt count.
    let before = retry_at - Duration::seconds(1);
    assert!(store
        .claim_deliveries(before, before + Duration::seconds(30), "node_b", 10)
        .await
        .unwrap()
        .is_empty());
    let again = store
        .claim_deliveries(retry_at, retry_at + Duration::seconds(30), "node_b", 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id.as_str(), again[0].attempts), (to_own.id.as_str(), 1));
    assert!(store
        .finish_delivery(
            &again[0].id,
            "node_b",
            &attempt(2, retry_at, None),
            DeliveryNext::GiveUp
        )
        .await
        .unwrap());
    // An expired lease is taken over.
    let key2 = sample_key(&ws.id, "k2");
    store
        .insert_key(&key2, &audit("key.created", &key2.id, Some(&ws.id)))
        .await
        .unwrap();
    store.fan_out_events(now, 100).await.unwrap();
    let first = store
        .claim_deliveries(now, now + Duration::seconds(1), "node_a", 1)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    let later = now + Duration::seconds(2);
    let taken = store
        .claim_deliveries(later, later + Duration::seconds(30), "node_b", 10)
        .await
        .unwrap();
    assert!(
        taken.iter().any(|c| c.id == first[0].id),
        "the lapsed lease is taken over"
    );
    assert!(!store
        .finish_delivery(
            &first[0].id,
            "node_a",
            &attempt(1, later, Some(200)),
            DeliveryNext::Delivered
        )
        .await
        .unwrap());

    let own_deliveries = store.list_deliveries(&own.id, &Page::first(10)).await.unwrap().items;
    let oldest = own_deliveries.last().unwrap();
    assert_eq!(oldest.status, DeliveryStatus::Failed);
    assert_eq!(oldest.event_type, "key.created");
    let codes: Vec<Option<u16>> = oldest.attempts.iter().map(|a| a.status_code).collect();
    assert_eq!(codes, [Some(500), None]);
    assert_eq!(oldest.attempts[1].error.as_deref(), Some("connection refused"));
    let global_deliveries = store.list_deliveries(&global.id, &Page::first(10)).await.unwrap().items;
    let delivered = global_deliveries.last().unwrap();
    assert_eq!(delivered.status, DeliveryStatus::Delivered);
    assert_eq!(delivered.delivered_at, Some(now));
    assert!(store
        .list_deliveries(&other_ws.id, &Page::first(10))
        .await
        .unwrap()
        .items
        .is_empty());
    assert!(store
        .list_deliveries(&filtered_out.id, &Page::first(10))
        .await
        .unwrap()
        .items
        .is_empty());
}

pub async fn deleting_a_webhook_stops_its_deliveries(store: Arc<dyn Store>) {
    let t0 = now() - Duration::seconds(5);
    let (ws, _) = workspace_with_key(store.as_ref()).await;
    // Created after the key: the earlier key.created is not sent to it.
    let hook = endpoint(Some(&ws.id), &[], t0 + Duration::seconds(10));
    store
        .insert_webhook(&hook, &audit("webhook.created", &hook.id, Some(&ws.id)))
        .await
        .unwrap();
    let late = now() + Duration::seconds(20);
    assert_eq!(store.fan_out_events(late, 100).await.unwrap(), 0);
    let key = sample_key(&ws.id, "later");
    let mut created = audit("key.created", &key.id, Some(&ws.id));
    created.at = late;
    store.insert_key(&key, &created).await.unwrap();
    assert_eq!(store.fan_out_events(late, 100).await.unwrap(), 1);
    let listed = store.list_webhooks(Some(&ws.id), &Page::first(10)).await.unwrap().items;
    assert_eq!(listed, std::slice::from_ref(&hook));
    store
        .delete_webhook(&hook.id, late, &audit("webhook.deleted", &hook.id, Some(&ws.id)))
        .await
        .unwrap();
    assert!(store.get_webhook(&hook.id).await.unwrap().is_none());
    assert!(store
        .list_webhooks(None, &Page::first(200))
        .await
        .unwrap()
        .items
        .iter()
        .all(|w| w.id != hook.id));
    assert!(store.claim_deliveries(late, late, "node", 10).await.unwrap().is_empty());
    let deliveries = store.list_deliveries(&hook.id, &Page::first(10)).await.unwrap().items;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].status, DeliveryStatus::Failed);
    let again = store
        .delete_webhook(&hook.id, late, &audit("webhook.deleted", &hook.id, Some(&ws.id)))
        .await;
    assert!(matches!(again, Err(StoreError::NotFound)));
}

pub async fn webhook_secrets_are_listed_and_replaced_only_if_unchanged(store: Arc<dyn Store>) {
    let (ws, _) = workspace_with_key(store.as_ref()).await;
    let hook = endpoint(Some(&ws.id), &[], now());
    store
        .insert_webhook(&hook, &audit("webhook.created", &hook.id, Some(&ws.id)))
        .await
        .unwrap();
    let deleted = endpoint(Some(&ws.id), &[], now());
    store
        .insert_webhook(&deleted, &audit("webhook.created", &deleted.id, Some(&ws.id)))
        .await
        .unwrap();
    store
        .delete_webhook(&deleted.id, now(), &audit("webhook.deleted", &deleted.id, Some(&ws.id)))
        .await
        .unwrap();
    let listed = store.webhook_secrets().await.unwrap();
    for endpoint in [&hook, &deleted] {
        assert!(
            listed.contains(&(endpoint.id.clone(), endpoint.secret.clone())),
            "a deleted endpoint's secret is re-sealed too"
        );
    }
    let resealed = sealed_secret(&hook.id);
    assert!(store
        .replace_webhook_secret(&hook.id, &hook.secret, &resealed)
        .await
        .unwrap());
    assert!(
        !store
            .replace_webhook_secret(&hook.id, &hook.secret, &sealed_secret(&hook.id))
            .await
            .unwrap(),
        "another node re-sealed it first"
    );
    assert_eq!(store.get_webhook(&hook.id).await.unwrap().unwrap().secret, resealed);
}

pub async fn lifecycle_events_are_due_once(store: Arc<dyn Store>) {
    let ws = sample_workspace("Lifecycle");
    store
        .insert_workspace(&ws, &audit("workspace.created", &ws.id, Some(&ws.id)))
        .await
        .unwrap();
    let t0 = now();
    let mut expiring = sample_key(&ws.id, "expiring");
    expiring.expires_at = Some(t0 + Duration::days(3));
    let mut expired = sample_key(&ws.id, "expired");
    expired.expires_at = Some(t0 - Duration::hours(1));
    let mut old = sample_key(&ws.id, "old");
    old.created_at = t0 - Duration::days(100);
    let mut far = sample_key(&ws.id, "far");
    far.expires_at = Some(t0 + Duration::days(30));
    let mut revoked = sample_key(&ws.id, "revoked");
    revoked.expires_at = Some(t0 + Duration::days(1));
    for key in [&expiring, &expired, &old, &far, &revoked] {
        store
            .insert_key(key, &audit("key.created", &key.id, Some(&ws.id)))
            .await
            .unwrap();
    }
    store
        .revoke_key(&revoked.id, t0, None, &audit("key.revoked", &revoked.id, Some(&ws.id)))
        .await
        .unwrap();
    let scan = KeyEventScan {
        now: t0,
        expiring_before: t0 + Duration::days(7),
        expired_since: t0 - Duration::days(30),
        created_before: Some(t0 - Duration::days(90)),
        limit: 100,
    };
    let mut due: Vec<(EventType, String)> = store
        .keys_due_for_events(&scan)
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, key)| key.workspace_id == ws.id)
        .map(|(kind, key)| (kind, key.name))
        .collect();
    due.sort();
    assert_eq!(
        due,
        [
            (EventType::KeyExpiring, "expiring".to_owned()),
            (EventType::KeyExpired, "expired".to_owned()),
            (EventType::KeyMaxAgeExceeded, "old".to_owned()),
        ]
    );
    // Once stored under their dedup names, they are not due again.
    let stored: Vec<NewEvent> = [(EventType::KeyExpiring, &expiring), (EventType::KeyExpired, &expired)]
        .into_iter()
        .map(|(kind, key)| NewEvent {
            dedup_key: Some(format!(
                "{kind}:{}:{}",
                key.id,
                key.expires_at.unwrap().timestamp_millis()
            )),
            ..new_event(kind, &key.id, t0)
        })
        .chain(std::iter::once(NewEvent {
            dedup_key: Some(format!("key.max_age_exceeded:{}", old.id)),
            ..new_event(EventType::KeyMaxAgeExceeded, &old.id, t0)
        }))
        .collect();
    assert_eq!(store.insert_events(&stored).await.unwrap(), 3);
    let again = store.keys_due_for_events(&scan).await.unwrap();
    assert!(again.iter().all(|(_, key)| key.workspace_id != ws.id), "{again:?}");
}
