//! Workspaces and keys: round trips, lookups by hash, lists, revokes, rotation.

use super::*;

pub async fn workspace_round_trip(store: Arc<dyn Store>) {
    assert!(
        store.get_workspace(ADMIN_WORKSPACE_ID).await.unwrap().is_some(),
        "migrations create ws_admin"
    );
    let mut ws = sample_workspace("Acme");
    store
        .insert_workspace(&ws, &audit("workspace.created", &ws.id, Some(&ws.id)))
        .await
        .unwrap();
    assert_eq!(store.get_workspace(&ws.id).await.unwrap(), Some(ws.clone()));

    ws.name = "Acme Inc".into();
    ws.disabled = true;
    ws.leak_policy = Some(keygate_core::model::OnLeak::Expire);
    ws.plan = None;
    ws.updated_at = now() + Duration::seconds(1);
    store
        .update_workspace(&ws, &audit("workspace.updated", &ws.id, Some(&ws.id)))
        .await
        .unwrap();
    assert_eq!(store.get_workspace(&ws.id).await.unwrap(), Some(ws.clone()));

    let missing = Workspace {
        id: "ws_missing".into(),
        ..ws.clone()
    };
    let err = store
        .update_workspace(&missing, &audit("workspace.updated", "ws_missing", None))
        .await;
    assert!(matches!(err, Err(StoreError::NotFound)));

    for i in 0..3 {
        let extra = sample_workspace(&format!("extra {i}"));
        store
            .insert_workspace(&extra, &audit("workspace.created", &extra.id, None))
            .await
            .unwrap();
    }
    let first = store.list_workspaces(&Page::first(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    let cursor = first.next_cursor.clone().unwrap();
    let second = store
        .list_workspaces(&Page {
            limit: 200,
            cursor: Some(cursor),
        })
        .await
        .unwrap();
    assert!(second.items.iter().all(|w| first.items.iter().all(|f| f.id != w.id)));
    assert!(first.items[0].id > first.items[1].id, "newest first");
}

/// An import batch (crates/keygate-engine/src/admin/import.rs): stored
/// hashes are reported with their workspace, a batch of more rows than one
/// statement holds is written whole with one audit event, and a key that is
/// already stored is left exactly as it was.
pub async fn an_import_inserts_what_is_new_and_leaves_the_rest(store: Arc<dyn Store>) {
    let (ws, existing) = workspace_with_key(store.as_ref()).await;
    let mut batch: Vec<ApiKey> = (0..1_000)
        .map(|i| sample_key(&ws.id, &format!("imported {i}")))
        .collect();
    for key in &mut batch[..10] {
        key.legacy = true;
    }
    let mut again = existing.clone();
    again.id = "key_other_id".into();
    again.name = "renamed by the import".into();
    batch.push(again);

    let hashes: Vec<KeyHash> = batch.iter().map(|k| k.hash).collect();
    assert_eq!(
        store.stored_key_hashes(&hashes).await.unwrap(),
        vec![(existing.hash, ws.id.clone())]
    );
    let event = audit("keys.imported", &ws.id, Some(&ws.id));
    assert_eq!(store.import_keys(&batch, &event).await.unwrap(), 1_000);
    assert_eq!(store.count_keys(&ws.id).await.unwrap(), 1_001);
    assert_eq!(store.get_key(&existing.id).await.unwrap(), Some(existing.clone()));
    assert_eq!(store.get_key("key_other_id").await.unwrap(), None);
    let (found, _) = store.find_key_by_hash(&batch[0].hash).await.unwrap().unwrap();
    assert_eq!(found, batch[0]);
    assert!(found.legacy);
    assert!(!store.find_key_by_hash(&batch[10].hash).await.unwrap().unwrap().0.legacy);
    assert_eq!(store.stored_key_hashes(&hashes).await.unwrap().len(), 1_001);

    // A re-run inserts nothing and writes no event.
    let rerun = audit("keys.imported", &ws.id, Some(&ws.id));
    assert_eq!(store.import_keys(&batch, &rerun).await.unwrap(), 0);
    let filter = AuditFilter {
        workspace_id: Some(ws.id.clone()),
        ..AuditFilter::default()
    };
    let actions: Vec<String> = store
        .list_audit_events(&filter, &Page::first(50))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| e.action)
        .filter(|a| a == "keys.imported")
        .collect();
    assert_eq!(actions.len(), 1);
}

pub async fn deleting_a_workspace_revokes_its_keys(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    store
        .delete_workspace(&ws.id, now(), &audit("workspace.deleted", &ws.id, Some(&ws.id)))
        .await
        .unwrap();
    assert_eq!(store.get_workspace(&ws.id).await.unwrap(), None);
    let key = store.get_key(&key.id).await.unwrap().unwrap();
    assert!(key.revoked_at.is_some());
    let again = store
        .delete_workspace(&ws.id, now(), &audit("workspace.deleted", &ws.id, Some(&ws.id)))
        .await;
    assert!(matches!(again, Err(StoreError::NotFound)));
}

pub async fn key_round_trip_and_lookup_by_hash(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    assert_eq!(store.get_key(&key.id).await.unwrap(), Some(key.clone()));
    let (found, found_ws) = store.find_key_by_hash(&key.hash).await.unwrap().unwrap();
    assert_eq!(found, key);
    assert_eq!(found_ws, ws);
    assert_eq!(store.find_key_by_hash(&KeyHash::of("unknown")).await.unwrap(), None);
    assert_eq!(store.get_key("key_missing").await.unwrap(), None);
    assert_eq!(store.count_keys(&ws.id).await.unwrap(), 1);
}

/// Many keys looked up at once, more than one statement holds: each stored
/// one with its workspace, unknown hashes left out.
pub async fn keys_are_looked_up_by_many_hashes_at_once(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    let others: Vec<ApiKey> = (0..600).map(|i| sample_key(&ws.id, &format!("other {i}"))).collect();
    let event = audit("keys.imported", &ws.id, Some(&ws.id));
    assert_eq!(store.import_keys(&others, &event).await.unwrap(), 600);
    let mut hashes: Vec<KeyHash> = others.iter().map(|k| k.hash).collect();
    hashes.push(KeyHash::of("unknown"));
    hashes.push(key.hash);
    let mut found = store.find_keys_by_hashes(&hashes).await.unwrap();
    assert_eq!(found.len(), 601);
    assert!(found.iter().all(|(_, w)| *w == ws));
    found.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let mut expected: Vec<ApiKey> = others.into_iter().chain([key]).collect();
    expected.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(found.into_iter().map(|(k, _)| k).collect::<Vec<_>>(), expected);
    assert!(store.find_keys_by_hashes(&[]).await.unwrap().is_empty());
}

pub async fn duplicate_hash_is_a_conflict(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    let twin = ApiKey {
        hash: key.hash,
        ..sample_key(&ws.id, "twin")
    };
    let err = store
        .insert_key(&twin, &audit("key.created", &twin.id, Some(&ws.id)))
        .await;
    assert!(matches!(err, Err(StoreError::Conflict(_))), "{err:?}");
    let events = store
        .list_audit_events(
            &AuditFilter {
                key_id: Some(twin.id.clone()),
                ..Default::default()
            },
            &Page::first(10),
        )
        .await
        .unwrap();
    assert!(events.items.is_empty(), "a failed write leaves no audit event");
}

pub async fn list_keys_filters_and_pages(store: Arc<dyn Store>) {
    let ws = sample_workspace("Lister");
    store
        .insert_workspace(&ws, &audit("workspace.created", &ws.id, Some(&ws.id)))
        .await
        .unwrap();
    let t = now();
    let active = sample_key(&ws.id, "active");
    let expired = ApiKey {
        expires_at: Some(t - Duration::seconds(1)),
        ..sample_key(&ws.id, "expired")
    };
    let future = ApiKey {
        expires_at: Some(t + Duration::hours(1)),
        environment: "test".into(),
        ..sample_key(&ws.id, "future")
    };
    let revoked = sample_key(&ws.id, "revoked");
    let deleted = sample_key(&ws.id, "deleted");
    for key in [&active, &expired, &future, &revoked, &deleted] {
        store
            .insert_key(key, &audit("key.created", &key.id, Some(&ws.id)))
            .await
            .unwrap();
    }
    store
        .revoke_key(
            &revoked.id,
            t,
            Some("leaked"),
            &audit("key.revoked", &revoked.id, Some(&ws.id)),
        )
        .await
        .unwrap();
    store
        .delete_key(&deleted.id, t, &audit("key.deleted", &deleted.id, Some(&ws.id)))
        .await
        .unwrap();

    let names = |status: Option<KeyStatus>, env: Option<&str>| {
        let store = store.clone();
        let ws_id = ws.id.clone();
        let filter = KeyFilter {
            status,
            environment: env.map(str::to_owned),
            leaked: false,
        };
        async move {
            let page = store.list_keys(&ws_id, &filter, &Page::first(50), t).await.unwrap();
            let mut names: Vec<String> = page.items.into_iter().map(|k| k.name).collect();
            names.sort();
            names
        }
    };
    assert_eq!(names(None, None).await, ["active", "expired", "future", "revoked"]);
    assert_eq!(names(Some(KeyStatus::Active), None).await, ["active", "future"]);
    assert_eq!(names(Some(KeyStatus::Expired), None).await, ["expired"]);
    assert_eq!(names(Some(KeyStatus::Revoked), None).await, ["revoked"]);
    assert_eq!(names(Some(KeyStatus::Deleted), None).await, ["deleted"]);
    assert_eq!(names(None, Some("test")).await, ["future"]);

    let mut seen = Vec::new();
    let mut page = Page::first(1);
    loop {
        let result = store.list_keys(&ws.id, &KeyFilter::default(), &page, t).await.unwrap();
        assert!(result.items.len() <= 1);
        seen.extend(result.items.into_iter().map(|k| k.id));
        match result.next_cursor {
            Some(cursor) => page.cursor = Some(cursor),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "pages are newest first with no gaps or repeats");
    assert_eq!(seen.len(), 4);
}

pub async fn concurrent_revokes_apply_once(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            let (id, ws_id) = (key.id.clone(), ws.id.clone());
            tokio::spawn(async move {
                let reason = format!("reason {i}");
                store
                    .revoke_key(&id, now(), Some(&reason), &audit("key.revoked", &id, Some(&ws_id)))
                    .await
            })
        })
        .collect();
    let mut revoked = 0;
    for task in tasks {
        match task.await.unwrap().unwrap() {
            RevokeOutcome::Revoked(k) => {
                revoked += 1;
                assert!(k.revoked_at.is_some());
            }
            RevokeOutcome::AlreadyRevoked(k) => assert!(k.revoked_at.is_some()),
        }
    }
    assert_eq!(revoked, 1);
    let filter = AuditFilter {
        key_id: Some(key.id.clone()),
        ..Default::default()
    };
    let events = store.list_audit_events(&filter, &Page::first(50)).await.unwrap().items;
    assert_eq!(events.iter().filter(|e| e.action == "key.revoked").count(), 1);
}

pub async fn update_never_undoes_a_revoke(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    store
        .revoke_key(&key.id, now(), None, &audit("key.revoked", &key.id, Some(&ws.id)))
        .await
        .unwrap();
    let stale = ApiKey {
        name: "renamed".into(),
        scopes: vec![],
        roles: vec!["writer".into(), "reader".into()],
        ..key.clone()
    };
    store
        .update_key(&stale, &audit("key.updated", &key.id, Some(&ws.id)))
        .await
        .unwrap();
    let stored = store.get_key(&key.id).await.unwrap().unwrap();
    assert_eq!(stored.name, "renamed");
    assert_eq!(stored.roles, ["writer", "reader"], "roles are written, in order");
    assert!(stored.revoked_at.is_some());
}

pub async fn rotation_links_keys_and_refuses_twice(store: Arc<dyn Store>) {
    let (ws, old) = workspace_with_key(store.as_ref()).await;
    let grace_end = now() + Duration::hours(24);
    let new = ApiKey {
        lineage_id: old.lineage_id.clone(),
        rotated_from: Some(old.id.clone()),
        ..sample_key(&ws.id, &old.name)
    };
    store
        .rotate_key(&old.id, grace_end, &new, &audit("key.rotated", &old.id, Some(&ws.id)))
        .await
        .unwrap();
    let old_now = store.get_key(&old.id).await.unwrap().unwrap();
    assert_eq!(old_now.rotated_to.as_deref(), Some(new.id.as_str()));
    assert_eq!(old_now.expires_at, Some(grace_end));
    assert_eq!(store.get_key(&new.id).await.unwrap(), Some(new.clone()));

    let newer = sample_key(&ws.id, "again");
    let again = store
        .rotate_key(&old.id, grace_end, &newer, &audit("key.rotated", &old.id, Some(&ws.id)))
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))));
    assert_eq!(store.get_key(&newer.id).await.unwrap(), None, "nothing half-written");
    let missing = store
        .rotate_key(
            "key_missing",
            grace_end,
            &newer,
            &audit("key.rotated", "key_missing", None),
        )
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound)));

    // A revoked key is replaced: linked, still revoked, its expiry untouched.
    let (_, revoked) = workspace_with_key(store.as_ref()).await;
    store
        .revoke_key(
            &revoked.id,
            now(),
            Some("leaked"),
            &audit("key.revoked", &revoked.id, None),
        )
        .await
        .unwrap();
    let replacement = sample_key(&revoked.workspace_id, "replacement");
    store
        .rotate_key(
            &revoked.id,
            grace_end,
            &replacement,
            &audit("key.rotated", &revoked.id, None),
        )
        .await
        .unwrap();
    let revoked_now = store.get_key(&revoked.id).await.unwrap().unwrap();
    assert_eq!(revoked_now.rotated_to.as_deref(), Some(replacement.id.as_str()));
    assert!(revoked_now.revoked_at.is_some());
    assert_eq!(revoked_now.expires_at, revoked.expires_at);

    // A grace beyond an existing, earlier expiry never extends the key's life.
    let short = ApiKey {
        expires_at: Some(now() + Duration::minutes(5)),
        ..sample_key(&ws.id, "short")
    };
    store
        .insert_key(&short, &audit("key.created", &short.id, Some(&ws.id)))
        .await
        .unwrap();
    let successor = sample_key(&ws.id, "short");
    store
        .rotate_key(
            &short.id,
            now() + Duration::days(7),
            &successor,
            &audit("key.rotated", &short.id, Some(&ws.id)),
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_key(&short.id).await.unwrap().unwrap().expires_at,
        short.expires_at
    );
}

pub async fn delete_key_hides_and_revokes(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    let deleted = store
        .delete_key(&key.id, now(), &audit("key.deleted", &key.id, Some(&ws.id)))
        .await
        .unwrap();
    assert!(deleted.deleted_at.is_some() && deleted.revoked_at.is_some());
    assert_eq!(deleted.revoked_reason.as_deref(), Some("deleted"));
    let missing = store
        .delete_key("key_missing", now(), &audit("key.deleted", "key_missing", None))
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound)));
}
