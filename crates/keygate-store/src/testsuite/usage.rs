//! Usage: counts, retried batches, roll-ups, pruning, activity and top keys.

use super::*;

pub async fn usage_counts_add_up_and_last_use_moves_forward(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    let minute = (now().timestamp() / 60) * 60;
    let row = |outcome: &str, count| UsageCount {
        key_id: key.id.clone(),
        workspace_id: ws.id.clone(),
        minute,
        outcome: outcome.into(),
        count,
    };
    let later = now() + Duration::seconds(30);
    let batch = UsageBatch {
        id: "ub_first".into(),
        at: now(),
        counts: vec![row("admitted", 3), row("IP_NOT_ALLOWED", 1)],
        last_uses: vec![LastUse {
            key_id: key.id.clone(),
            at: later,
            ip: "203.0.113.9".into(),
        }],
        events: vec![],
    };
    store.record_usage(&batch).await.unwrap();
    let older = UsageBatch {
        id: "ub_second".into(),
        at: now(),
        counts: vec![row("admitted", 2)],
        last_uses: vec![LastUse {
            key_id: key.id.clone(),
            at: later - Duration::seconds(10),
            ip: "198.51.100.1".into(),
        }],
        events: vec![],
    };
    store.record_usage(&older).await.unwrap();

    let from = DateTime::from_timestamp(minute, 0).unwrap_or_default();
    let usage = store
        .key_usage(&key.id, UsageGrain::Minute, from, from + Duration::minutes(1))
        .await
        .unwrap();
    assert_eq!(usage, vec![row("IP_NOT_ALLOWED", 1), row("admitted", 5)]);
    // `to` a millisecond into the minute: the minute started before `to`, so it is in.
    let just_after = store
        .key_usage(&key.id, UsageGrain::Minute, from, from + Duration::milliseconds(1))
        .await
        .unwrap();
    assert_eq!(just_after, usage);
    assert!(store
        .key_usage(
            &key.id,
            UsageGrain::Minute,
            from + Duration::minutes(1),
            from + Duration::minutes(2)
        )
        .await
        .unwrap()
        .is_empty());
    let stored = store.get_key(&key.id).await.unwrap().unwrap();
    assert_eq!(stored.last_used_at, Some(later));
    assert_eq!(stored.last_used_ip.as_deref(), Some("203.0.113.9"));
    // A use at the same millisecond, written by a later batch, is the later use.
    let same_instant = UsageBatch {
        id: "ub_third".into(),
        at: now(),
        counts: vec![],
        last_uses: vec![LastUse {
            key_id: key.id.clone(),
            at: later,
            ip: "127.0.0.1".into(),
        }],
        events: vec![],
    };
    store.record_usage(&same_instant).await.unwrap();
    let stored = store.get_key(&key.id).await.unwrap().unwrap();
    assert_eq!(stored.last_used_ip.as_deref(), Some("127.0.0.1"));
}

/// A flush whose commit succeeded but whose answer was lost is retried with
/// the same batch id: it must count once. A new batch still adds up.
pub async fn a_retried_usage_batch_counts_once(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    let minute = (now().timestamp() / 60) * 60;
    let batch = |id: &str, count| UsageBatch {
        id: id.into(),
        at: now(),
        counts: vec![UsageCount {
            key_id: key.id.clone(),
            workspace_id: ws.id.clone(),
            minute,
            outcome: "admitted".into(),
            count,
        }],
        last_uses: vec![],
        events: vec![],
    };
    store.record_usage(&batch("ub_retried", 7)).await.unwrap();
    store.record_usage(&batch("ub_retried", 7)).await.unwrap();
    store.record_usage(&batch("ub_next", 1)).await.unwrap();
    let from = DateTime::from_timestamp(minute, 0).unwrap_or_default();
    let usage = store
        .key_usage(&key.id, UsageGrain::Minute, from, from + Duration::minutes(1))
        .await
        .unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].count, 8);
}

/// Batches spread over minutes of two hours and two days (and one retried)
/// read back the same at every grain: each rollup is the sum of its minutes.
pub async fn usage_is_rolled_up_to_hours_and_days_exactly(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    // 23:58 on some day: the minutes below cross an hour and a day.
    let base = UsageGrain::Day.bucket_of(now().timestamp()) - 120;
    let count = |minute: i64, outcome: &str, count| UsageCount {
        key_id: key.id.clone(),
        workspace_id: ws.id.clone(),
        minute: base + minute * 60,
        outcome: outcome.into(),
        count,
    };
    let batches = [
        (
            "ub_a",
            vec![
                count(0, "admitted", 3),
                count(1, "admitted", 2),
                count(1, "RATE_LIMIT_EXCEEDED", 4),
            ],
        ),
        ("ub_b", vec![count(2, "admitted", 5), count(3, "INVALID_API_KEY", 1)]),
        (
            "ub_a",
            vec![
                count(0, "admitted", 3),
                count(1, "admitted", 2),
                count(1, "RATE_LIMIT_EXCEEDED", 4),
            ],
        ),
        ("ub_c", vec![count(1, "admitted", 1), count(62, "admitted", 7)]),
    ];
    for (id, counts) in batches {
        let batch = UsageBatch {
            id: id.into(),
            at: now(),
            counts,
            last_uses: vec![],
            events: vec![],
        };
        store.record_usage(&batch).await.unwrap();
    }
    let from = DateTime::from_timestamp(base - 86_400, 0).unwrap();
    let to = DateTime::from_timestamp(base + 2 * 86_400, 0).unwrap();
    let read = |grain| {
        let store = store.clone();
        let key_id = key.id.clone();
        async move {
            let mut rows: Vec<_> = store
                .key_usage(&key_id, grain, from, to)
                .await
                .unwrap()
                .into_iter()
                .map(|row| (row.minute - base, row.outcome, row.count))
                .collect();
            // Sorted here: the database's collation may order outcomes differently.
            rows.sort();
            rows
        }
    };
    let owned = |rows: &[(i64, &str, u64)]| {
        rows.iter()
            .map(|(m, o, c)| (*m, (*o).to_owned(), *c))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        read(UsageGrain::Minute).await,
        owned(&[
            (0, "admitted", 3),
            (60, "RATE_LIMIT_EXCEEDED", 4),
            (60, "admitted", 3),
            (120, "admitted", 5),
            (180, "INVALID_API_KEY", 1),
            (3_720, "admitted", 7),
        ])
    );
    // 23:58 and 23:59 are the last hour of the first day; 00:00, 00:01 and 01:00 the next day.
    assert_eq!(
        read(UsageGrain::Hour).await,
        owned(&[
            (-3_480, "RATE_LIMIT_EXCEEDED", 4),
            (-3_480, "admitted", 6),
            (120, "INVALID_API_KEY", 1),
            (120, "admitted", 5),
            (3_720, "admitted", 7),
        ])
    );
    assert_eq!(
        read(UsageGrain::Day).await,
        owned(&[
            (-86_280, "RATE_LIMIT_EXCEEDED", 4),
            (-86_280, "admitted", 6),
            (120, "INVALID_API_KEY", 1),
            (120, "admitted", 12),
        ])
    );
}

pub async fn pruning_drops_old_minutes_and_keeps_their_rollups(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    let today = UsageGrain::Day.bucket_of(now().timestamp());
    let old = today - 10 * 86_400;
    let batch = UsageBatch {
        id: "ub_prune".into(),
        at: now(),
        counts: [old, today]
            .into_iter()
            .map(|minute| UsageCount {
                key_id: key.id.clone(),
                workspace_id: ws.id.clone(),
                minute,
                outcome: "admitted".into(),
                count: 2,
            })
            .collect(),
        last_uses: vec![],
        events: vec![],
    };
    store.record_usage(&batch).await.unwrap();
    let at = |seconds| DateTime::from_timestamp(seconds, 0).unwrap();
    let cutoffs = UsageCutoffs {
        minutes_before: at(today - 86_400),
        hours_before: at(old - 86_400),
        days_before: at(old - 86_400),
    };
    assert_eq!(
        store.prune_usage(&cutoffs).await.unwrap(),
        0,
        "minutes not rolled up yet are kept"
    );
    assert!(store.roll_up_usage(today + 60).await.unwrap() > 0);
    assert_eq!(
        store.prune_usage(&cutoffs).await.unwrap(),
        2,
        "the old minute only, of the key and of the workspace"
    );
    let range = (at(old - 86_400), at(today + 86_400));
    let starts = |grain| {
        let store = store.clone();
        let key_id = key.id.clone();
        async move {
            let rows = store.key_usage(&key_id, grain, range.0, range.1).await.unwrap();
            rows.into_iter().map(|row| row.minute).collect::<Vec<_>>()
        }
    };
    assert_eq!(starts(UsageGrain::Minute).await, [today]);
    assert_eq!(starts(UsageGrain::Hour).await, [old, today]);
    assert_eq!(starts(UsageGrain::Day).await, [old, today]);

    let later = UsageCutoffs {
        hours_before: at(today),
        ..cutoffs
    };
    assert_eq!(
        store.prune_usage(&later).await.unwrap(),
        2,
        "the old hour, of the key and of the workspace"
    );
    assert_eq!(starts(UsageGrain::Hour).await, [today]);
    assert_eq!(starts(UsageGrain::Day).await, [old, today]);
}

pub async fn key_activity_splits_recent_from_baseline(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    let (_, quiet) = workspace_with_key(store.as_ref()).await;
    let now_minute = (now().timestamp() / 60) * 60;
    let count = |key: &crate::ApiKey, minutes_ago: i64, count| UsageCount {
        key_id: key.id.clone(),
        workspace_id: key.workspace_id.clone(),
        minute: now_minute - minutes_ago * 60,
        outcome: "admitted".into(),
        count,
    };
    let batch = UsageBatch {
        id: new_id("ub", now(), &mut rand::thread_rng()),
        at: now(),
        counts: vec![
            count(&key, 0, 40),
            count(&key, 4, 2),
            count(&key, 5, 7),
            count(&key, 64, 3),
            count(&key, 65, 1000),
            count(&quiet, 1, 5),
        ],
        last_uses: vec![],
        events: vec![],
    };
    store.record_usage(&batch).await.unwrap();
    let recent_from = now_minute - 4 * 60;
    let activity = store
        .key_activity(recent_from - 3600, recent_from, now_minute + 60, 10)
        .await
        .unwrap();
    let mine: Vec<_> = activity
        .iter()
        .filter(|a| a.key_id == key.id || a.key_id == quiet.id)
        .collect();
    assert_eq!(mine.len(), 1, "the quiet key is under the floor: {activity:?}");
    assert_eq!((mine[0].recent, mine[0].baseline), (42, 10));
    assert_eq!(mine[0].workspace_id, ws.id);
    assert_eq!(mine[0].key_created_at, key.created_at);
}

/// 1,201 keys and 2 outcomes: the counts span several multi-row statements.
pub async fn a_flush_larger_than_one_statement_is_written_whole(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    let minute = (now().timestamp() / 60) * 60;
    let mut key_ids: Vec<String> = (0..1_200).map(|n| format!("key_bulk{n:05}{}", &ws.id[3..])).collect();
    key_ids.push(key.id.clone());
    let counts = key_ids
        .iter()
        .enumerate()
        .flat_map(|(n, key_id)| {
            ["admitted", "RATE_LIMIT_EXCEEDED"].map(|outcome| UsageCount {
                key_id: key_id.clone(),
                workspace_id: ws.id.clone(),
                minute,
                outcome: outcome.into(),
                count: n as u64 + 1,
            })
        })
        .collect();
    let used_at = now();
    let batch = UsageBatch {
        id: new_id("ub", now(), &mut rand::thread_rng()),
        at: now(),
        counts,
        last_uses: vec![LastUse {
            key_id: key.id.clone(),
            at: used_at,
            ip: "192.0.2.1".into(),
        }],
        events: vec![],
    };
    store.record_usage(&batch).await.unwrap();
    let from = DateTime::from_timestamp(minute, 0).unwrap();
    let to = from + Duration::days(1);
    for (n, key_id) in key_ids.iter().enumerate() {
        if n % 97 != 0 && n != key_ids.len() - 1 {
            continue;
        }
        for grain in UsageGrain::ALL {
            let rows = store
                .key_usage(key_id, grain, from - Duration::days(1), to)
                .await
                .unwrap();
            let counts: Vec<(&str, u64)> = rows.iter().map(|r| (r.outcome.as_str(), r.count)).collect();
            let expected = n as u64 + 1;
            assert_eq!(
                counts,
                [("RATE_LIMIT_EXCEEDED", expected), ("admitted", expected)],
                "{key_id} at {grain:?}"
            );
        }
    }
    let stored = store.get_key(&key.id).await.unwrap().unwrap();
    assert_eq!(stored.last_used_at, Some(used_at));
    assert_eq!(stored.last_used_ip.as_deref(), Some("192.0.2.1"));
}

/// Hours and days read the same before, during and after the job, for
/// minutes recorded on time and for a late batch the job has passed.
pub async fn the_roll_up_job_rolls_each_minute_once_and_reads_stay_exact(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    let hour = UsageGrain::Hour.bucket_of(now().timestamp()) - 3_600;
    let (m0, m1) = (hour + 60, hour + 120);
    let batch = |id: &str, minute: i64, count: u64| UsageBatch {
        id: id.into(),
        at: now(),
        counts: vec![UsageCount {
            key_id: key.id.clone(),
            workspace_id: ws.id.clone(),
            minute,
            outcome: "admitted".into(),
            count,
        }],
        last_uses: vec![],
        events: vec![],
    };
    let totals = || {
        let store = store.clone();
        let key_id = key.id.clone();
        async move {
            let from = DateTime::from_timestamp(hour, 0).unwrap();
            let to = from + Duration::days(1);
            let mut totals = Vec::new();
            for grain in [UsageGrain::Hour, UsageGrain::Day] {
                let rows = store
                    .key_usage(&key_id, grain, from - Duration::days(1), to)
                    .await
                    .unwrap();
                assert_eq!(rows.len(), 1, "one row per bucket and outcome: {rows:?}");
                totals.push(rows[0].count);
            }
            totals
        }
    };
    store.record_usage(&batch("ub_m0", m0, 3)).await.unwrap();
    store.record_usage(&batch("ub_m1", m1, 4)).await.unwrap();
    assert_eq!(totals().await, [7, 7], "read from the minutes before any roll-up");
    let rolled = store.roll_up_usage(m1).await.unwrap();
    assert!(rolled > 0);
    assert_eq!(totals().await, [7, 7], "m0 from the rollups, m1 from the minutes");
    assert_eq!(store.roll_up_usage(m1).await.unwrap(), 0, "nothing twice");
    assert_eq!(store.roll_up_usage(m0).await.unwrap(), 0, "never backwards");
    // A late batch for a minute the job has passed goes to the rollups directly.
    store.record_usage(&batch("ub_late", m0, 5)).await.unwrap();
    assert_eq!(totals().await, [12, 12]);
    store.roll_up_usage(m1 + 60).await.unwrap();
    assert_eq!(totals().await, [12, 12]);
    // With every minute pruned, the rollups alone still hold all of it.
    let far = DateTime::from_timestamp(m1 + 3_600, 0).unwrap();
    let cutoffs = UsageCutoffs {
        minutes_before: far,
        hours_before: far - Duration::days(30),
        days_before: far - Duration::days(30),
    };
    assert!(store.prune_usage(&cutoffs).await.unwrap() >= 2);
    let minutes = store
        .key_usage(
            &key.id,
            UsageGrain::Minute,
            DateTime::from_timestamp(hour, 0).unwrap(),
            far,
        )
        .await
        .unwrap();
    assert!(minutes.is_empty(), "{minutes:?}");
    assert_eq!(totals().await, [12, 12]);
}

/// Two keys of one workspace and one of another: the workspace series is the
/// sum of its keys, at every grain, read from the minutes, then from the
/// rollups, then with a late batch.
pub async fn workspace_usage_sums_its_keys_before_and_after_the_roll_up(store: Arc<dyn Store>) {
    let (ws, first) = workspace_with_key(store.as_ref()).await;
    let second = sample_key(&ws.id, "second");
    store
        .insert_key(&second, &audit("key.created", &second.id, Some(&ws.id)))
        .await
        .unwrap();
    let (other_ws, other) = workspace_with_key(store.as_ref()).await;
    let hour = UsageGrain::Hour.bucket_of(now().timestamp()) - 3_600;
    let count = |key: &ApiKey, minute: i64, outcome: &str, count: u64| UsageCount {
        key_id: key.id.clone(),
        workspace_id: key.workspace_id.clone(),
        minute,
        outcome: outcome.into(),
        count,
    };
    let batch = |id: &str, counts: Vec<UsageCount>| UsageBatch {
        id: id.into(),
        at: now(),
        counts,
        last_uses: vec![],
        events: vec![],
    };
    store
        .record_usage(&batch(
            "ub_ws1",
            vec![
                count(&first, hour, "admitted", 3),
                count(&second, hour, "admitted", 4),
                count(&second, hour + 60, "RATE_LIMIT_EXCEEDED", 2),
                count(&other, hour, "admitted", 100),
            ],
        ))
        .await
        .unwrap();
    let read = |workspace_id: String, grain: UsageGrain, from: i64| {
        let store = store.clone();
        async move {
            let from = DateTime::from_timestamp(from, 0).unwrap();
            let to = DateTime::from_timestamp(hour + 3_600, 0).unwrap();
            let rows = store.workspace_usage(&workspace_id, grain, from, to).await.unwrap();
            rows.into_iter()
                .map(|r| (r.start, r.outcome, r.count))
                .collect::<Vec<_>>()
        }
    };
    let day = UsageGrain::Day.bucket_of(hour);
    let expect = |admitted: u64| {
        let rate_limited = |start: i64| (start, "RATE_LIMIT_EXCEEDED".to_owned(), 2);
        let admitted = |start: i64| (start, "admitted".to_owned(), admitted);
        (
            vec![admitted(hour), rate_limited(hour + 60)],
            vec![rate_limited(hour), admitted(hour)],
            vec![rate_limited(day), admitted(day)],
        )
    };
    let all_grains = || async {
        (
            read(ws.id.clone(), UsageGrain::Minute, hour).await,
            read(ws.id.clone(), UsageGrain::Hour, hour).await,
            read(ws.id.clone(), UsageGrain::Day, day).await,
        )
    };
    assert_eq!(all_grains().await, expect(7), "read from the minutes");
    store.roll_up_usage(hour + 120).await.unwrap();
    assert_eq!(all_grains().await, expect(7), "read from the rollups");
    store
        .record_usage(&batch("ub_ws_late", vec![count(&first, hour, "admitted", 1)]))
        .await
        .unwrap();
    assert_eq!(all_grains().await, expect(8), "with a late batch");
    let theirs = read(other_ws.id.clone(), UsageGrain::Hour, hour).await;
    assert_eq!(theirs, [(hour, "admitted".to_owned(), 100)]);
}

/// Top keys over 1 and 7 days, read from the minutes, from the windows, a
/// day later (the windows moved), and with a late batch for the day before.
pub async fn top_keys_are_exact_before_and_after_the_roll_up_and_as_days_pass(store: Arc<dyn Store>) {
    let (ws, a) = workspace_with_key(store.as_ref()).await;
    let [b, c] = ["b", "c"].map(|name| sample_key(&ws.id, name));
    for key in [&b, &c] {
        store
            .insert_key(key, &audit("key.created", &key.id, Some(&ws.id)))
            .await
            .unwrap();
    }
    let (_, d) = workspace_with_key(store.as_ref()).await;
    let today = UsageGrain::Day.bucket_of(now().timestamp());
    let count = |key: &ApiKey, minute: i64, outcome: &str, count: u64| UsageCount {
        key_id: key.id.clone(),
        workspace_id: key.workspace_id.clone(),
        minute,
        outcome: outcome.into(),
        count,
    };
    let batch = |id: &str, counts: Vec<UsageCount>| UsageBatch {
        id: id.into(),
        at: now(),
        counts,
        last_uses: vec![],
        events: vec![],
    };
    store
        .record_usage(&batch(
            "ub_top",
            vec![
                count(&a, today + 60, "admitted", 10),
                count(&b, today + 60, "admitted", 5),
                count(&b, today + 120, "RATE_LIMIT_EXCEEDED", 8),
                count(&c, today - 6 * 86_400 + 60, "admitted", 50),
                count(&c, today + 120, "admitted", 1),
                count(&d, today + 60, "admitted", 100),
            ],
        ))
        .await
        .unwrap();
    let top = |days: u32, day: i64, by: TopBy, limit: u32| {
        let store = store.clone();
        let ws = ws.id.clone();
        async move {
            let keys = store.top_keys(&ws, days, day, by, limit).await.unwrap();
            keys.into_iter()
                .map(|k| (k.name, k.requests, k.rejected))
                .collect::<Vec<_>>()
        }
    };
    let row = |name: &str, requests: u64, rejected: u64| (name.to_owned(), requests, rejected);
    let today_answers = || async {
        (
            top(1, today, TopBy::Requests, 10).await,
            top(7, today, TopBy::Requests, 10).await,
            top(7, today, TopBy::Rejections, 10).await,
            top(7, today, TopBy::Requests, 2).await,
        )
    };
    let expected = (
        vec![row("b", 13, 8), row("Production Server", 10, 0), row("c", 1, 0)],
        vec![row("c", 51, 0), row("b", 13, 8), row("Production Server", 10, 0)],
        vec![row("b", 13, 8)],
        vec![row("c", 51, 0), row("b", 13, 8)],
    );
    assert_eq!(today_answers().await, expected, "from the minutes");
    store.roll_up_usage(today + 180).await.unwrap();
    assert_eq!(today_answers().await, expected, "from the windows");
    assert_eq!(store.roll_up_usage(today + 180).await.unwrap(), 0);

    // A day later: today's counts leave the 1-day window, c's old day the 7-day one.
    let tomorrow = today + 86_400;
    store.roll_up_usage(tomorrow + 60).await.unwrap();
    assert_eq!(top(1, tomorrow, TopBy::Requests, 10).await, []);
    assert_eq!(
        top(7, tomorrow, TopBy::Requests, 10).await,
        [row("b", 13, 8), row("Production Server", 10, 0), row("c", 1, 0)]
    );
    // A late batch for yesterday counts in 7 days, not in today's 1 day.
    store
        .record_usage(&batch("ub_top_late", vec![count(&a, today + 300, "admitted", 5)]))
        .await
        .unwrap();
    assert_eq!(
        top(7, tomorrow, TopBy::Requests, 10).await,
        [row("Production Server", 15, 0), row("b", 13, 8), row("c", 1, 0)]
    );
    assert_eq!(top(1, tomorrow, TopBy::Requests, 10).await, []);
    // 30 days later, nothing is left, and the rows are gone.
    store.roll_up_usage(today + 31 * 86_400).await.unwrap();
    assert_eq!(top(30, today + 31 * 86_400 - 60, TopBy::Requests, 10).await, []);
}

/// A page of keys' usage in one call: each key's own rows, nothing of keys
/// not asked for, the same before and after the roll-up; no keys, no rows.
pub async fn usage_of_several_keys_is_read_in_one_call(store: Arc<dyn Store>) {
    let (ws, first) = workspace_with_key(store.as_ref()).await;
    let mut second = sample_key(&ws.id, "second");
    let mut other = sample_key(&ws.id, "not asked for");
    for key in [&mut second, &mut other] {
        store
            .insert_key(key, &audit("key.created", &key.id, Some(&ws.id)))
            .await
            .unwrap();
    }
    let hour = UsageGrain::Hour.bucket_of(now().timestamp()) - 3_600;
    let count = |key: &ApiKey, minute: i64, outcome: &str, count| UsageCount {
        key_id: key.id.clone(),
        workspace_id: ws.id.clone(),
        minute: hour + minute * 60,
        outcome: outcome.into(),
        count,
    };
    let batch = UsageBatch {
        id: "ub_keys".into(),
        at: now(),
        counts: vec![
            count(&first, 1, "admitted", 3),
            count(&first, 61, "admitted", 2),
            count(&second, 2, "admitted", 4),
            count(&second, 2, "RATE_LIMIT_EXCEEDED", 1),
            count(&other, 1, "admitted", 9),
        ],
        last_uses: vec![],
        events: vec![],
    };
    store.record_usage(&batch).await.unwrap();
    let from = DateTime::from_timestamp(hour, 0).unwrap();
    let to = from + Duration::hours(3);
    let asked = [first.id.clone(), second.id.clone()];
    let read = |grain| {
        let store = store.clone();
        let asked = asked.clone();
        async move {
            let mut rows: Vec<_> = store
                .keys_usage(&asked, grain, from, to)
                .await
                .unwrap()
                .into_iter()
                .map(|row| (row.key_id, row.minute - hour, row.outcome, row.count))
                .collect();
            rows.sort();
            rows
        }
    };
    let expected = |rows: &[(&ApiKey, i64, &str, u64)]| {
        let mut rows: Vec<_> = rows
            .iter()
            .map(|(key, m, o, c)| (key.id.clone(), *m, (*o).to_owned(), *c))
            .collect();
        rows.sort();
        rows
    };
    let hourly = expected(&[
        (&first, 0, "admitted", 3),
        (&first, 3_600, "admitted", 2),
        (&second, 0, "RATE_LIMIT_EXCEEDED", 1),
        (&second, 0, "admitted", 4),
    ]);
    assert_eq!(read(UsageGrain::Hour).await, hourly, "from the minutes");
    assert_eq!(
        read(UsageGrain::Minute).await,
        expected(&[
            (&first, 60, "admitted", 3),
            (&first, 3_660, "admitted", 2),
            (&second, 120, "RATE_LIMIT_EXCEEDED", 1),
            (&second, 120, "admitted", 4),
        ])
    );
    store.roll_up_usage(hour + 3_600).await.unwrap();
    assert_eq!(read(UsageGrain::Hour).await, hourly, "the first hour from its rollup");
    assert!(store
        .keys_usage(&[], UsageGrain::Hour, from, to)
        .await
        .unwrap()
        .is_empty());
}
