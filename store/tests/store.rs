//! One suite, two backends: every test runs against a SQLite file and against a real
//! PostgreSQL server started for it.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Result;
use mainloop_store::{
    ConfirmOverrides, Cost, Decision, InboxKind, MessageKind, MessageStatus, NewEvent,
    NewInboxItem, NewProposal, NewTaskInput, ProposalStatus, Role, Store, StoreError, TaskBudget,
    TaskProjection, TaskStatus, Usage, event_kind,
};
use mainloop_testkit::postgres::PgServer;

/// A store and whatever keeps its database alive.
struct Fixture {
    store: Store,
    _pg: Option<PgServer>,
    _dir: tempfile::TempDir,
}

async fn sqlite() -> Result<Fixture> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let store = Store::connect(&url).await?;
    store.migrate().await?;
    Ok(Fixture {
        store,
        _pg: None,
        _dir: dir,
    })
}

async fn postgres() -> Result<Fixture> {
    let pg = PgServer::start().await?;
    let url = pg.create_database("mainloop").await?;
    let store = Store::connect(&url).await?;
    store.migrate().await?;
    Ok(Fixture {
        store,
        _pg: Some(pg),
        _dir: tempfile::tempdir()?,
    })
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn sqlite() -> anyhow::Result<()> {
                    let fixture = super::sqlite().await?;
                    super::$name(&fixture.store).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn postgres() -> anyhow::Result<()> {
                    let fixture = super::postgres().await?;
                    super::$name(&fixture.store).await
                }
            }
        )*
    };
}

on_both!(
    accepting_a_message_stores_it_with_its_event_and_signal,
    an_idempotency_key_stores_one_message,
    racing_duplicates_store_one_message,
    messages_page_backwards_oldest_first,
    a_reply_is_created_once_and_completed_once,
    failing_a_turn_leaves_a_visible_error,
    turn_context_puts_replies_after_their_messages,
    events_are_per_user_and_ordered,
    concurrent_appends_are_seen_in_id_order_without_gaps,
    a_large_batch_of_events_is_appended_whole_and_in_order,
    proposals_are_stored_once_and_decided_once,
    outbox_claims_in_order_and_respects_leases,
    outbox_claims_the_chat_before_a_backlog_of_task_signals,
    outbox_keeps_order_within_a_workflow_across_retries,
    outbox_gives_a_relay_back_a_claim_whose_answer_it_lost,
    compaction_folds_each_message_once,
    migrations_are_idempotent,
    confirming_a_proposal_creates_its_task_once,
    racing_decisions_on_a_proposal_take_one,
    task_records_resolve_and_raise_inbox_items_once,
    a_task_record_builds_on_the_row_as_it_was,
    task_input_is_checked_against_the_state_and_stored_once,
    racing_inputs_for_one_wait_are_accepted_once,
    job_logs_and_costs_are_counted_once,
    a_webhook_delivery_nudges_the_tasks_it_names_once,
    notes_name_the_task_they_are_about,
    a_task_records_its_news_with_its_status_once,
    tasks_are_counted_by_status_for_every_status,
    rate_limits_only_ever_extend,
);

const WF: &str = "main-thread/alice";

/// Waits for a wake-up. A lagged receiver was woken too: it only means "look again".
async fn woken(wake: &mut tokio::sync::broadcast::Receiver<()>) -> Result<()> {
    match tokio::time::timeout(Duration::from_secs(10), wake.recv()).await? {
        Ok(()) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Ok(()),
        Err(closed) => Err(closed.into()),
    }
}

async fn accepting_a_message_stores_it_with_its_event_and_signal(store: &Store) -> Result<()> {
    let accepted = store
        .accept_user_message("alice", "key-1", "hello", WF)
        .await?;
    assert!(!accepted.replayed);
    let m = &accepted.message;
    assert_eq!(
        (m.role, m.kind, m.status),
        (Role::User, MessageKind::Chat, MessageStatus::Complete)
    );
    assert_eq!(m.content, "hello");

    let events = store.events_after("alice", 0, 100).await?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, event_kind::MESSAGE_CREATED);
    assert_eq!(events[0].data["id"], m.id.as_str());

    let items = store
        .claim_outbox("test-relay", 10, Duration::from_secs(30))
        .await?;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].workflow_id, WF);
    assert_eq!(items[0].signal, "message");
    let payload: serde_json::Value = serde_json::from_str(&items[0].payload)?;
    assert_eq!(payload["message_id"], m.id.as_str());
    assert_eq!(store.get_message("alice", &m.id).await?, accepted.message);
    // Another user cannot see it.
    assert!(matches!(
        store.get_message("bob", &m.id).await,
        Err(StoreError::NotFound)
    ));
    Ok(())
}

async fn an_idempotency_key_stores_one_message(store: &Store) -> Result<()> {
    let first = store.accept_user_message("alice", "k", "hello", WF).await?;
    let second = store.accept_user_message("alice", "k", "hello", WF).await?;
    assert!(second.replayed);
    assert_eq!(first.message.id, second.message.id);
    assert!(matches!(
        store
            .accept_user_message("alice", "k", "something else", WF)
            .await,
        Err(StoreError::IdempotencyMismatch)
    ));
    // Keys are per user.
    let bob = store
        .accept_user_message("bob", "k", "hello", "main-thread/bob")
        .await?;
    assert!(!bob.replayed);
    assert_eq!(store.list_messages("alice", None, 10).await?.len(), 1);
    assert_eq!(store.outbox_backlog().await?, 2);
    assert_eq!(store.events_after("alice", 0, 10).await?.len(), 1);
    Ok(())
}

async fn racing_duplicates_store_one_message(store: &Store) -> Result<()> {
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.accept_user_message("alice", "race", "hi", WF).await
        }));
    }
    let mut ids = HashSet::new();
    for task in tasks {
        ids.insert(task.await??.message.id);
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(store.list_messages("alice", None, 10).await?.len(), 1);
    assert_eq!(store.outbox_backlog().await?, 1);
    Ok(())
}

async fn messages_page_backwards_oldest_first(store: &Store) -> Result<()> {
    for i in 0..7 {
        store
            .accept_user_message("alice", &format!("k{i}"), &format!("m{i}"), WF)
            .await?;
    }
    let newest = store.list_messages("alice", None, 3).await?;
    let texts: Vec<_> = newest.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, ["m4", "m5", "m6"]);
    let older = store.list_messages("alice", Some(newest[0].seq), 3).await?;
    let texts: Vec<_> = older.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, ["m1", "m2", "m3"]);
    let oldest = store.list_messages("alice", Some(older[0].seq), 3).await?;
    assert_eq!(oldest.len(), 1);
    Ok(())
}

async fn a_reply_is_created_once_and_completed_once(store: &Store) -> Result<()> {
    let question = store
        .accept_user_message("alice", "k", "2+2?", WF)
        .await?
        .message;
    let first = store.start_reply("alice", &question.id).await?;
    assert!(!first.already_complete);
    assert_eq!(first.attempt, 1);
    assert_eq!(first.message.status, MessageStatus::Streaming);
    assert_eq!(
        first.message.reply_to.as_deref(),
        Some(question.id.as_str())
    );
    // A retried turn restarts streaming on the same message.
    let second = store.start_reply("alice", &question.id).await?;
    assert_eq!(second.message.id, first.message.id);
    assert_eq!(second.attempt, 2);
    store
        .append_reply_text("alice", &first.message.id, 2, "fo")
        .await?;
    // Attempt 1 outlived its timeout: it may no longer complete the reply attempt 2 owns.
    let stale = store
        .finish_reply(
            "alice",
            &first.message.id,
            Some(1),
            MessageKind::Chat,
            "stale",
            None,
        )
        .await?;
    assert_eq!(stale.status, MessageStatus::Streaming);
    assert_eq!(stale.content, "");
    let usage = Usage {
        model: "claude-test".into(),
        input_tokens: 12,
        output_tokens: 3,
        cache_tokens: 40,
        cost_usd: Some(0.0125),
    };
    let done = store
        .finish_reply(
            "alice",
            &first.message.id,
            Some(2),
            MessageKind::Chat,
            "four",
            Some(&usage),
        )
        .await?;
    assert_eq!(done.status, MessageStatus::Complete);
    assert_eq!(done.content, "four");
    assert_eq!(done.usage, Some(usage));
    // Completing again changes nothing and announces nothing.
    let events_before = store.events_after("alice", 0, 100).await?.len();
    let again = store
        .finish_reply(
            "alice",
            &first.message.id,
            None,
            MessageKind::Chat,
            "five",
            None,
        )
        .await?;
    assert_eq!(again.content, "four");
    let third = store.start_reply("alice", &question.id).await?;
    assert!(third.already_complete);
    assert_eq!(third.message.content, "four");
    assert_eq!(
        store.events_after("alice", 0, 100).await?.len(),
        events_before
    );

    let kinds: Vec<String> = store
        .events_after("alice", 0, 100)
        .await?
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            event_kind::MESSAGE_CREATED,
            event_kind::MESSAGE_STARTED,
            event_kind::MESSAGE_STARTED,
            event_kind::MESSAGE_DELTA,
            event_kind::MESSAGE_COMPLETED
        ]
    );
    assert_eq!(store.list_messages("alice", None, 10).await?.len(), 2);
    Ok(())
}

async fn failing_a_turn_leaves_a_visible_error(store: &Store) -> Result<()> {
    let question = store
        .accept_user_message("alice", "k", "hi", WF)
        .await?
        .message;
    let error = store
        .fail_reply("alice", &question.id, "The model refused the request.")
        .await?;
    assert_eq!(error.kind, MessageKind::Error);
    assert_eq!(error.status, MessageStatus::Complete);
    // A completed reply is never overwritten by a late failure.
    let q2 = store
        .accept_user_message("alice", "k2", "hi", WF)
        .await?
        .message;
    let reply = store.start_reply("alice", &q2.id).await?;
    store
        .finish_reply(
            "alice",
            &reply.message.id,
            None,
            MessageKind::Chat,
            "hello",
            None,
        )
        .await?;
    let kept = store.fail_reply("alice", &q2.id, "late failure").await?;
    assert_eq!(
        (kept.kind, kept.content.as_str()),
        (MessageKind::Chat, "hello")
    );
    Ok(())
}

async fn turn_context_puts_replies_after_their_messages(store: &Store) -> Result<()> {
    // m2 arrives while m1's reply is being written, so r1 is stored after m2.
    let m1 = store
        .accept_user_message("alice", "1", "m1", WF)
        .await?
        .message;
    let r1 = store.start_reply("alice", &m1.id).await?.message;
    let m2 = store
        .accept_user_message("alice", "2", "m2", WF)
        .await?
        .message;
    store
        .finish_reply("alice", &r1.id, None, MessageKind::Chat, "r1", None)
        .await?;
    let r2 = store.start_reply("alice", &m2.id).await?.message;
    store
        .finish_reply("alice", &r2.id, None, MessageKind::Chat, "r2", None)
        .await?;
    let m3 = store
        .accept_user_message("alice", "3", "m3", WF)
        .await?
        .message;

    let context = store.turn_context("alice", &m3.id, 50).await?;
    let texts: Vec<_> = context.history.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, ["m1", "r1", "m2", "r2"]);
    assert_eq!(context.message.id, m3.id);
    assert!(context.existing_reply.is_none());

    // m2's own turn sees m1 and r1 only, not itself or anything later.
    let context = store.turn_context("alice", &m2.id, 50).await?;
    let texts: Vec<_> = context.history.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, ["m1", "r1"]);
    assert_eq!(
        context.existing_reply.map(|r| r.content),
        Some("r2".to_string())
    );

    // The limit keeps the most recent history.
    let context = store.turn_context("alice", &m3.id, 2).await?;
    let texts: Vec<_> = context.history.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, ["m2", "r2"]);
    Ok(())
}

async fn events_are_per_user_and_ordered(store: &Store) -> Result<()> {
    let mut wake = store.subscribe_events();
    let a = store
        .append_events(
            "alice",
            &[NewEvent::new("test.a", 1), NewEvent::new("test.b", 2)],
        )
        .await?;
    store
        .append_events("bob", &[NewEvent::new("test.c", 3)])
        .await?;
    woken(&mut wake).await?;
    assert!(a[0].id < a[1].id);
    let alice = store.events_after("alice", 0, 10).await?;
    assert_eq!(alice, a);
    assert_eq!(store.events_after("alice", a[0].id, 10).await?, a[1..]);
    assert_eq!(store.events_after("bob", 0, 10).await?.len(), 1);
    assert!(store.last_event_id().await? > a[1].id);
    Ok(())
}

/// A reader following the log with `events_after` must never skip an event: ids it sees
/// later are always above the ones it saw (PostgreSQL hands them out in commit order).
async fn a_large_batch_of_events_is_appended_whole_and_in_order(store: &Store) -> Result<()> {
    let before = store.last_event_id().await?;
    let batch: Vec<NewEvent> = (0..1_200)
        .map(|i| NewEvent::new(event_kind::THREAD_NOTICE, serde_json::json!({ "n": i })))
        .collect();
    let appended = store.append_events("alice", &batch).await?;
    let ids: Vec<i64> = appended.iter().map(|e| e.id).collect();
    assert_eq!(ids, (before + 1..=before + 1_200).collect::<Vec<_>>());
    let mut read = Vec::new();
    let mut after = before;
    loop {
        let page = store.events_after("alice", after, 500).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        read.extend(page);
    }
    assert_eq!(read.len(), 1_200);
    for (i, event) in read.iter().enumerate() {
        assert_eq!(event.id, before + 1 + i as i64);
        assert_eq!(event.data["n"], i);
    }
    Ok(())
}

async fn concurrent_appends_are_seen_in_id_order_without_gaps(store: &Store) -> Result<()> {
    const WRITERS: usize = 6;
    const EACH: usize = 40;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..EACH {
                store
                    .append_events("alice", &[NewEvent::new("test", (w, i))])
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut after = 0;
            let mut wake = store.subscribe_events();
            while seen.len() < WRITERS * EACH {
                let batch = store.events_after("alice", after, 1000).await?;
                if batch.is_empty() {
                    woken(&mut wake).await?;
                    continue;
                }
                for event in batch {
                    after = event.id;
                    seen.push(event.data);
                }
            }
            anyhow::Ok(seen)
        })
    };
    for writer in writers {
        writer.await??;
    }
    let seen = tokio::time::timeout(Duration::from_secs(60), reader).await???;
    let distinct: HashSet<String> = seen.iter().map(|v| v.to_string()).collect();
    assert_eq!(
        distinct.len(),
        WRITERS * EACH,
        "the reader skipped or repeated events"
    );
    Ok(())
}

async fn proposals_are_stored_once_and_decided_once(store: &Store) -> Result<()> {
    let m = store
        .accept_user_message("alice", "k", "add dark mode", WF)
        .await?
        .message;
    let reply = store.start_reply("alice", &m.id).await?.message;
    let new = NewProposal {
        id: "prop-1".into(),
        message_id: reply.id.clone(),
        title: "Add dark mode".into(),
        description: "Follow the system theme".into(),
        repo: "https://github.com/acme/web".into(),
        model: None,
        skip_planning: false,
    };
    let p = store.create_proposal("alice", &new).await?;
    assert_eq!(p.status, ProposalStatus::Pending);
    let again = store.create_proposal("alice", &new).await?;
    assert_eq!(again, p);
    let created_events = store
        .events_after("alice", 0, 100)
        .await?
        .into_iter()
        .filter(|e| e.kind == event_kind::PROPOSAL_CREATED)
        .count();
    assert_eq!(created_events, 1);
    let done = store
        .finish_reply(
            "alice",
            &reply.id,
            None,
            MessageKind::Chat,
            "Shall I?",
            None,
        )
        .await?;
    assert_eq!(done.proposals, vec![p.clone()]);
    assert_eq!(
        store.recent_repos("alice", 5).await?,
        ["https://github.com/acme/web"]
    );

    let outbox_before = store.outbox_backlog().await?;
    assert!(matches!(
        store
            .decide_proposal("bob", "prop-1", Decision::Reject, "main-thread/bob")
            .await,
        Err(StoreError::NotFound)
    ));
    let rejected = store
        .decide_proposal("alice", "prop-1", Decision::Reject, WF)
        .await?;
    assert_eq!(rejected.status, ProposalStatus::Rejected);
    assert!(rejected.decided_at.is_some());
    assert_eq!(store.outbox_backlog().await?, outbox_before + 1);
    assert!(matches!(
        store
            .decide_proposal("alice", "prop-1", Decision::Reject, WF)
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.outbox_backlog().await?, outbox_before + 1);
    let listed = store.list_messages("alice", None, 10).await?;
    assert_eq!(listed[1].proposals[0].status, ProposalStatus::Rejected);
    Ok(())
}

async fn outbox_claims_the_chat_before_a_backlog_of_task_signals(store: &Store) -> Result<()> {
    for i in 0..20 {
        store
            .accept_user_message("alice", &format!("t{i}"), "x", &format!("task/t{i}"))
            .await?;
    }
    store
        .accept_user_message("alice", "chat-1", "still there?", WF)
        .await?;
    store
        .accept_user_message("alice", "chat-2", "hello?", WF)
        .await?;
    let claimed = store
        .claim_outbox("test-relay", 5, Duration::from_secs(60))
        .await?;
    let workflows: Vec<&str> = claimed.iter().map(|i| i.workflow_id.as_str()).collect();
    assert_eq!(
        workflows,
        ["task/t0", "task/t1", "task/t2", WF, WF],
        "the thread's two messages come in the first claim, in id order with the rest"
    );
    let thread: Vec<i64> = claimed
        .iter()
        .filter(|i| i.workflow_id == WF)
        .map(|i| i.id)
        .collect();
    assert!(thread[0] < thread[1], "a workflow's own order is kept");
    Ok(())
}

async fn outbox_claims_in_order_and_respects_leases(store: &Store) -> Result<()> {
    for i in 0..3 {
        store
            .accept_user_message("alice", &format!("a{i}"), "x", WF)
            .await?;
        store
            .accept_user_message("bob", &format!("b{i}"), "x", "main-thread/bob")
            .await?;
    }
    let claimed = store
        .claim_outbox("test-relay", 4, Duration::from_secs(60))
        .await?;
    assert_eq!(claimed.len(), 4);
    assert!(claimed.windows(2).all(|w| w[0].id < w[1].id));
    assert!(claimed.iter().all(|i| i.attempts == 1));
    // Leased items are not claimed by another relay, and what queues behind them in the same
    // workflow waits until they are delivered (or their lease runs out).
    assert!(
        store
            .claim_outbox("another-relay", 10, Duration::from_secs(60))
            .await?
            .is_empty()
    );
    for item in &claimed {
        store.outbox_delivered(item.id).await?;
    }
    let rest = store
        .claim_outbox("test-relay", 10, Duration::from_secs(60))
        .await?;
    assert_eq!(rest.len(), 2);
    for item in &rest {
        store.outbox_delivered(item.id).await?;
    }
    assert_eq!(store.outbox_backlog().await?, 0);
    assert!(store.outbox_next_due().await?.is_none());

    // An expired lease makes an item due again (a relay that died mid-delivery).
    store.accept_user_message("alice", "late", "x", WF).await?;
    let item = store.claim_outbox("test-relay", 1, Duration::ZERO).await?;
    let again = store
        .claim_outbox("test-relay", 1, Duration::from_secs(60))
        .await?;
    assert_eq!(item[0].id, again[0].id);
    assert_eq!(again[0].attempts, 2);
    Ok(())
}

async fn outbox_gives_a_relay_back_a_claim_whose_answer_it_lost(store: &Store) -> Result<()> {
    store.accept_user_message("alice", "1", "x", WF).await?;
    store.accept_user_message("alice", "2", "x", WF).await?;
    // The claim commits, but the database goes down before the relay hears of it.
    let lost = store
        .claim_outbox("relay-a", 1, Duration::from_secs(60))
        .await?;
    assert_eq!(lost.len(), 1);
    // Another relay leaves it, and what follows it, to the lease.
    assert!(
        store
            .claim_outbox("relay-b", 10, Duration::from_secs(60))
            .await?
            .is_empty()
    );
    // The relay that claimed it takes it back at once, with its workflow's next item.
    let again = store
        .claim_outbox("relay-a", 10, Duration::from_secs(60))
        .await?;
    let ids: Vec<i64> = again.iter().map(|i| i.id).collect();
    assert_eq!(ids[0], lost[0].id, "{again:?}");
    assert_eq!(again.len(), 2, "{again:?}");
    assert_eq!(again[0].attempts, 2);
    // A retry releases the claim: its backoff holds, for this relay too.
    for item in &again {
        store
            .outbox_retry(
                item.id,
                Some("temporal unavailable"),
                Duration::from_secs(60),
            )
            .await?;
    }
    assert!(
        store
            .claim_outbox("relay-a", 10, Duration::from_secs(60))
            .await?
            .is_empty()
    );
    Ok(())
}

async fn outbox_keeps_order_within_a_workflow_across_retries(store: &Store) -> Result<()> {
    store.accept_user_message("alice", "1", "x", WF).await?;
    store.accept_user_message("alice", "2", "x", WF).await?;
    store
        .accept_user_message("bob", "1", "x", "main-thread/bob")
        .await?;
    let claimed = store
        .claim_outbox("test-relay", 1, Duration::from_secs(60))
        .await?;
    assert_eq!(claimed[0].workflow_id, WF);
    // Delivery failed: retry in a minute, recording why.
    store
        .outbox_retry(
            claimed[0].id,
            Some("temporal unavailable"),
            Duration::from_secs(60),
        )
        .await?;
    // alice's second message must wait behind the first; bob's is free to go.
    let next = store
        .claim_outbox("test-relay", 10, Duration::from_secs(60))
        .await?;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].workflow_id, "main-thread/bob");
    assert!(store.outbox_next_due().await?.is_some());
    Ok(())
}

async fn compaction_folds_each_message_once(store: &Store) -> Result<()> {
    let mut last = None;
    for i in 0..6 {
        let m = store
            .accept_user_message("alice", &format!("{i}"), &format!("m{i}"), WF)
            .await?
            .message;
        let r = store.start_reply("alice", &m.id).await?.message;
        store
            .finish_reply(
                "alice",
                &r.id,
                None,
                MessageKind::Chat,
                &format!("r{i}"),
                None,
            )
            .await?;
        last = Some(m);
    }
    // One more message, not yet answered: compaction must stop before it.
    store
        .accept_user_message("alice", "pending", "m6", WF)
        .await?;
    assert_eq!(store.unsummarized_count("alice").await?, 13);

    let plan = store.compaction_plan("alice", 4).await?;
    let texts: Vec<_> = plan.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, ["m0", "r0", "m1", "r1", "m2", "r2", "m3", "r3"]);
    let through = plan.messages.last().map(|m| m.seq).unwrap_or_default();
    let applied = store
        .apply_compaction("c1", "alice", plan.summarized_through, through, 8, "S1")
        .await?;
    assert_eq!(applied.message_count, 8);
    // Same key again: nothing changes.
    let repeated = store
        .apply_compaction(
            "c1",
            "alice",
            plan.summarized_through,
            through,
            8,
            "S1 again",
        )
        .await?;
    assert_eq!(repeated, applied);
    assert_eq!(store.summary("alice").await?, ("S1".to_string(), through));
    // A stale plan under a new key is refused.
    assert!(matches!(
        store
            .apply_compaction("c2", "alice", plan.summarized_through, through, 8, "S2")
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.unsummarized_count("alice").await?, 5);
    let next = store.compaction_plan("alice", 4).await?;
    assert_eq!(next.previous_summary, "S1");
    assert_eq!(
        next.messages.len(),
        0,
        "m4 r4 m5 r5 are kept, m6 is unanswered"
    );

    // The turn for the newest message sees only what the summary does not cover.
    let latest = last.map(|m| m.id).unwrap_or_default();
    let context = store.turn_context("alice", &latest, 50).await?;
    assert_eq!(context.summary, "S1");
    let texts: Vec<_> = context.history.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, ["m4", "r4"]);
    assert_eq!(store.compactions("alice").await?, vec![applied]);
    Ok(())
}

async fn rate_limits_only_ever_extend(store: &Store) -> Result<()> {
    use chrono::{TimeZone, Utc};
    let at = |ms: i64| Utc.timestamp_millis_opt(ms).single().expect("a valid time");
    assert_eq!(store.rate_limit("model").await?, None);
    let first = store
        .block_rate_limit("model", at(2_000_000), "429 first")
        .await?;
    assert_eq!(
        (first.until, first.reason.as_str()),
        (at(2_000_000), "429 first")
    );
    // A shorter block (a worker whose 429 came earlier, or said less) keeps the longer one.
    let shorter = store
        .block_rate_limit("model", at(1_000_000), "429 shorter")
        .await?;
    assert_eq!(shorter, first);
    let longer = store
        .block_rate_limit("model", at(3_000_000), "429 longer")
        .await?;
    assert_eq!(
        (longer.until, longer.reason.as_str()),
        (at(3_000_000), "429 longer")
    );
    assert_eq!(store.rate_limit("model").await?, Some(longer));
    // Scopes are independent.
    assert_eq!(store.rate_limit("github").await?, None);
    // Racing workers end with the latest block.
    let racers = (1..=20).map(|i| {
        let store = store.clone();
        async move {
            store
                .block_rate_limit("race", at(5_000_000 + i * 1_000), &format!("racer {i}"))
                .await
        }
    });
    futures::future::try_join_all(racers).await?;
    let raced = store.rate_limit("race").await?.expect("a block");
    assert_eq!(
        (raced.until, raced.reason.as_str()),
        (at(5_020_000), "racer 20")
    );
    Ok(())
}

async fn migrations_are_idempotent(store: &Store) -> Result<()> {
    store.migrate().await?;
    store.ping().await?;
    Ok(())
}

#[tokio::test]
async fn postgres_wakes_subscribers_of_other_connections() -> Result<()> {
    let pg = PgServer::start().await?;
    let url = pg.create_database("wake").await?;
    let writer = Store::connect(&url).await?;
    writer.migrate().await?;
    let reader = Store::connect(&url).await?;
    let mut wake = reader.subscribe_events();
    // The reader's listener announces itself once it listens; only then can it hear.
    woken(&mut wake).await?;
    writer
        .append_events("alice", &[NewEvent::new("x", 1)])
        .await?;
    woken(&mut wake).await?;
    assert_eq!(reader.events_after("alice", 0, 10).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn unknown_url_schemes_are_refused_without_leaking_secrets() {
    let result = Store::connect("mysql://root:hunter2@db/x").await;
    match result {
        Err(StoreError::Config(message)) => {
            assert!(!message.contains("hunter2"), "{message}");
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("mysql accepted"),
    }
}

/// A pending proposal `id` for alice on acme/web, in a reply to a message of hers.
async fn pending_proposal(store: &Store, id: &str) -> Result<()> {
    let m = store
        .accept_user_message("alice", &format!("k-{id}"), "add dark mode", WF)
        .await?
        .message;
    let reply = store.start_reply("alice", &m.id).await?.message;
    store
        .create_proposal(
            "alice",
            &NewProposal {
                id: id.into(),
                message_id: reply.id.clone(),
                title: "Add dark mode".into(),
                description: "Follow the system theme".into(),
                repo: "acme/web".into(),
                model: None,
                skip_planning: false,
            },
        )
        .await?;
    Ok(())
}

/// A confirmed task for alice on acme/web.
async fn confirmed_task(store: &Store, id: &str) -> Result<mainloop_store::Task> {
    pending_proposal(store, id).await?;
    let (_, task) = store
        .confirm_proposal("alice", id, &ConfirmOverrides::default(), WF)
        .await?;
    Ok(task)
}

async fn confirming_a_proposal_creates_its_task_once(store: &Store) -> Result<()> {
    let m = store
        .accept_user_message("alice", "k", "add dark mode", WF)
        .await?
        .message;
    let reply = store.start_reply("alice", &m.id).await?.message;
    store
        .create_proposal(
            "alice",
            &NewProposal {
                id: "p1".into(),
                message_id: reply.id.clone(),
                title: "Add dark mode".into(),
                description: "Follow the system theme".into(),
                repo: "acme/web".into(),
                model: None,
                skip_planning: false,
            },
        )
        .await?;
    let overrides = ConfirmOverrides {
        repo: Some("acme/app".into()),
        model: Some("claude-opus-4-1".into()),
        skip_planning: Some(true),
        budget: TaskBudget::default(),
    };
    let (proposal, task) = store
        .confirm_proposal("alice", "p1", &overrides, WF)
        .await?;
    assert_eq!(proposal.status, ProposalStatus::Confirmed);
    assert_eq!(task.id, "p1");
    assert_eq!(task.repo, "acme/app");
    assert_eq!(task.model.as_deref(), Some("claude-opus-4-1"));
    assert!(task.skip_planning);
    assert_eq!(task.status, TaskStatus::Pending);
    let again = store.confirm_proposal("alice", "p1", &overrides, WF).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    assert!(matches!(
        store.confirm_proposal("bob", "p1", &overrides, WF).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.get_task("bob", "p1").await,
        Err(StoreError::NotFound)
    ));
    let projects = store.list_projects("alice", 10).await?;
    assert_eq!(projects.len(), 1);
    assert_eq!(projects[0].repo, "acme/app");
    assert_eq!(store.recent_repos("alice", 5).await?[0], "acme/app");
    let signals: Vec<_> = store
        .claim_outbox("test-relay", 100, Duration::from_secs(30))
        .await?
        .into_iter()
        .filter(|item| item.signal == "proposal_decision")
        .collect();
    assert_eq!(signals.len(), 1);
    assert!(signals[0].payload.contains("confirmed"));
    Ok(())
}

async fn racing_decisions_on_a_proposal_take_one(store: &Store) -> Result<()> {
    for round in 0..5 {
        let id = format!("race-{round}");
        pending_proposal(store, &id).await?;
        // Confirms and rejects at once: one decision wins, the others are conflicts.
        let decisions = futures::future::join_all((0..10).map(|i| {
            let id = id.clone();
            async move {
                if i % 2 == 0 {
                    store
                        .confirm_proposal("alice", &id, &ConfirmOverrides::default(), WF)
                        .await
                        .map(|(p, _)| p.status)
                } else {
                    store
                        .decide_proposal("alice", &id, Decision::Reject, WF)
                        .await
                        .map(|p| p.status)
                }
            }
        }))
        .await;
        let won: Vec<_> = decisions.iter().filter_map(|d| d.as_ref().ok()).collect();
        assert_eq!(won.len(), 1, "{decisions:?}");
        assert!(
            decisions
                .iter()
                .all(|d| d.is_ok() || matches!(d, Err(StoreError::Conflict(_)))),
            "{decisions:?}"
        );
        let stored = store.get_proposal("alice", &id).await?;
        assert_eq!(&stored.status, won[0]);
        let task = store.get_task("alice", &id).await;
        assert_eq!(
            task.is_ok(),
            stored.status == ProposalStatus::Confirmed,
            "{task:?}"
        );
    }
    Ok(())
}

async fn task_records_resolve_and_raise_inbox_items_once(store: &Store) -> Result<()> {
    let task = confirmed_task(store, "t1").await?;
    let review = NewInboxItem {
        id: "t1/plan-review/1".into(),
        kind: InboxKind::PlanReview,
        title: "Review the plan".into(),
        body: String::new(),
        url: None,
        resolved: false,
    };
    let projection = TaskProjection {
        status: Some(TaskStatus::WaitingPlanReview),
        detail: "plan ready".into(),
        issue_number: Some(12),
        ci_attempts: 2,
        budget: TaskBudget {
            max_tokens: Some(50_000),
            max_cost_usd: Some(2.5),
            max_ci_attempts: None,
        },
        ..TaskProjection::default()
    };
    let recorded = store
        .record_task("alice", &task.id, &projection, Some(&review))
        .await?;
    assert_eq!(recorded.status, TaskStatus::WaitingPlanReview);
    assert_eq!(recorded.issue_number, Some(12));
    assert_eq!(recorded.ci_attempts, 2);
    assert_eq!(recorded.budget, projection.budget);
    // Recording the same thing twice (a retried activity) keeps one item and one event.
    let before = store.last_event_id().await?;
    store
        .record_task("alice", &task.id, &projection, Some(&review))
        .await?;
    assert_eq!(store.last_event_id().await?, before);
    let inbox = store.list_inbox("alice", 50).await?;
    assert_eq!(inbox.len(), 1);
    assert!(inbox[0].unread && !inbox[0].resolved);
    assert_eq!(store.unread_count("alice").await?, 1);
    // Moving on resolves what was asked.
    store
        .record_task(
            "alice",
            &task.id,
            &TaskProjection {
                status: Some(TaskStatus::Implementing),
                ..projection.clone()
            },
            None,
        )
        .await?;
    let inbox = store.list_inbox("alice", 50).await?;
    assert!(inbox[0].resolved && !inbox[0].unread);
    assert!(inbox[0].resolved_at.is_some());
    let merged = store
        .record_task(
            "alice",
            &task.id,
            &TaskProjection {
                status: Some(TaskStatus::Merged),
                ..projection
            },
            Some(&NewInboxItem {
                id: "t1/done".into(),
                kind: InboxKind::Done,
                title: "Merged".into(),
                body: String::new(),
                url: None,
                resolved: true,
            }),
        )
        .await?;
    assert!(merged.completed_at.is_some());
    assert_eq!(store.unread_count("alice").await?, 1);
    let read = store.mark_inbox_read("alice", None).await?;
    assert_eq!(read.len(), 1);
    assert_eq!(store.unread_count("alice").await?, 0);
    assert!(matches!(
        store.mark_inbox_read("alice", Some("nope")).await,
        Err(StoreError::NotFound)
    ));
    Ok(())
}

/// What `record_task` takes from the row it replaces (on PostgreSQL, read by the same
/// statement): the status when the projection names none, the first `completed_at`, the
/// pending input until the status moves, and whether anything changed at all.
async fn a_task_record_builds_on_the_row_as_it_was(store: &Store) -> Result<()> {
    let task = confirmed_task(store, "t-rec").await?;
    let waiting = TaskProjection {
        status: Some(TaskStatus::WaitingPlanReview),
        detail: "plan ready".into(),
        ..TaskProjection::default()
    };
    store.record_task("alice", &task.id, &waiting, None).await?;
    let kept = store
        .record_task(
            "alice",
            &task.id,
            &TaskProjection {
                status: None,
                detail: "still waiting".into(),
                ..TaskProjection::default()
            },
            None,
        )
        .await?;
    assert_eq!(kept.status, TaskStatus::WaitingPlanReview);
    assert_eq!(kept.detail, "still waiting");
    assert!(kept.completed_at.is_none());

    // The input stays pending while the status stays: a second one for the same wait is
    // refused. Moving on clears it, and the next wait takes new input.
    let allowed = [TaskStatus::WaitingPlanReview];
    let input = |id: &str| NewTaskInput {
        id: id.into(),
        kind: "plan_review",
        payload: serde_json::json!({ "action": "approve" }),
    };
    store
        .add_task_input("alice", &task.id, &input("rec-1"), &allowed)
        .await?;
    store.record_task("alice", &task.id, &waiting, None).await?;
    let refused = store
        .add_task_input("alice", &task.id, &input("rec-2"), &allowed)
        .await;
    assert!(
        matches!(&refused, Err(StoreError::Conflict(reason)) if reason.contains("not acted on")),
        "{refused:?}"
    );
    let implementing = TaskProjection {
        status: Some(TaskStatus::Implementing),
        ..waiting.clone()
    };
    store
        .record_task("alice", &task.id, &implementing, None)
        .await?;
    store.record_task("alice", &task.id, &waiting, None).await?;
    store
        .add_task_input("alice", &task.id, &input("rec-3"), &allowed)
        .await?;

    // An unchanged record announces nothing; a changed one announces the task once.
    let before = store.last_event_id().await?;
    store.record_task("alice", &task.id, &waiting, None).await?;
    assert_eq!(store.last_event_id().await?, before);
    let merged = TaskProjection {
        status: Some(TaskStatus::Merged),
        ..waiting.clone()
    };
    let first = store.record_task("alice", &task.id, &merged, None).await?;
    assert_eq!(store.last_event_id().await?, before + 1);
    let completed_at = first.completed_at.expect("a merged task is completed");
    // A retried record keeps the time the task first completed.
    let again = store
        .record_task(
            "alice",
            &task.id,
            &TaskProjection {
                detail: "merged, said again".into(),
                ..merged
            },
            None,
        )
        .await?;
    assert_eq!(again.completed_at, Some(completed_at));
    assert!(matches!(
        store
            .record_task("alice", "no-such-task", &waiting, None)
            .await,
        Err(StoreError::NotFound)
    ));
    Ok(())
}

async fn task_input_is_checked_against_the_state_and_stored_once(store: &Store) -> Result<()> {
    let task = confirmed_task(store, "t2").await?;
    let input = NewTaskInput {
        id: "in-1".into(),
        kind: "plan_review",
        payload: serde_json::json!({ "action": "approve" }),
    };
    let refused = store
        .add_task_input("alice", &task.id, &input, &[TaskStatus::WaitingPlanReview])
        .await;
    assert!(
        matches!(&refused, Err(StoreError::Conflict(reason)) if reason.contains("pending")),
        "{refused:?}"
    );
    store
        .record_task(
            "alice",
            &task.id,
            &TaskProjection {
                status: Some(TaskStatus::WaitingPlanReview),
                ..TaskProjection::default()
            },
            None,
        )
        .await?;
    store
        .claim_outbox("an-earlier-relay", 100, Duration::from_secs(30))
        .await?;
    for _ in 0..2 {
        store
            .add_task_input("alice", &task.id, &input, &[TaskStatus::WaitingPlanReview])
            .await?;
    }
    let signals = store
        .claim_outbox("test-relay", 100, Duration::from_secs(30))
        .await?;
    assert_eq!(signals.len(), 1, "{signals:?}");
    assert_eq!(signals[0].workflow_id, "task/t2");
    assert_eq!(signals[0].signal, "plan_review");
    let payload: serde_json::Value = serde_json::from_str(&signals[0].payload)?;
    assert_eq!(payload["id"], "in-1");
    assert_eq!(payload["action"], "approve");
    // Stored once, and shown back as it was sent.
    let inputs = store.task_inputs("alice", &task.id).await?;
    assert_eq!(inputs.len(), 1, "{inputs:?}");
    assert_eq!(inputs[0].kind, "plan_review");
    assert_eq!(inputs[0].payload, payload);
    assert!(store.task_inputs("bob", &task.id).await?.is_empty());
    Ok(())
}

async fn racing_inputs_for_one_wait_are_accepted_once(store: &Store) -> Result<()> {
    let task = confirmed_task(store, "t9").await?;
    let waiting = |status| TaskProjection {
        status: Some(status),
        ..TaskProjection::default()
    };
    store
        .record_task(
            "alice",
            &task.id,
            &waiting(TaskStatus::WaitingQuestions),
            None,
        )
        .await?;
    let answers = |i: usize| NewTaskInput {
        id: format!("answers-{i}"),
        kind: "answers",
        payload: serde_json::json!({ "answers": [{ "question_id": "q", "answer": i }] }),
    };
    let allowed = [TaskStatus::WaitingQuestions];
    let results = futures::future::join_all((0..10).map(|i| async move {
        store
            .add_task_input("alice", "t9", &answers(i), &allowed)
            .await
    }))
    .await;
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(accepted, 1, "{results:?}");
    assert!(
        results.iter().all(|r| r.is_ok()
            || matches!(r, Err(StoreError::Conflict(m)) if m.contains("not acted on"))),
        "{results:?}"
    );
    // The winner sent again is a replay, not a conflict.
    let winner = store.task_inputs("alice", "t9").await?[0].id.clone();
    let again = NewTaskInput {
        id: winner,
        ..answers(0)
    };
    store
        .add_task_input("alice", "t9", &again, &allowed)
        .await?;
    // A cancel is taken on top of the pending answers, once.
    let cancel = |i: usize| NewTaskInput {
        id: format!("cancel-{i}"),
        kind: "cancel",
        payload: serde_json::json!({}),
    };
    store
        .add_task_input("alice", "t9", &cancel(1), &allowed)
        .await?;
    let second = store
        .add_task_input("alice", "t9", &cancel(2), &allowed)
        .await;
    assert!(matches!(second, Err(StoreError::Conflict(_))), "{second:?}");
    // Once the task moves on, it takes input for its next wait.
    store
        .record_task("alice", &task.id, &waiting(TaskStatus::Planning), None)
        .await?;
    store
        .record_task(
            "alice",
            &task.id,
            &waiting(TaskStatus::WaitingQuestions),
            None,
        )
        .await?;
    store
        .add_task_input("alice", "t9", &answers(20), &allowed)
        .await?;
    assert_eq!(store.task_inputs("alice", "t9").await?.len(), 3);
    Ok(())
}

async fn job_logs_and_costs_are_counted_once(store: &Store) -> Result<()> {
    let task = confirmed_task(store, "t3").await?;
    store
        .start_task_run("alice", &task.id, "t3-plan-1", "plan")
        .await?;
    let lines = vec![
        (0, "agent".to_string(), "cloning".to_string()),
        (1, "claude".to_string(), "reading the code".to_string()),
    ];
    assert_eq!(
        store
            .append_task_logs("alice", &task.id, "t3-plan-1", &lines)
            .await?,
        2
    );
    // A re-attached job replays its output: nothing new is stored.
    assert_eq!(
        store
            .append_task_logs("alice", &task.id, "t3-plan-1", &lines)
            .await?,
        0
    );
    assert_eq!(store.task_logs("alice", &task.id, 100).await?.len(), 2);
    let cost = Cost {
        input_tokens: 100,
        output_tokens: 20,
        cache_tokens: 5,
        cost_usd: 0.25,
    };
    for _ in 0..2 {
        store
            .finish_task_run("alice", &task.id, "t3-plan-1", true, "planned", cost)
            .await?;
    }
    let task = store.get_task("alice", &task.id).await?;
    assert_eq!(task.cost, cost);
    let runs = store.task_runs("alice", &task.id).await?;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, "succeeded");
    store.put_artifact(&task.id, "ci/1", "boom").await?;
    store.put_artifact(&task.id, "ci/1", "boom again").await?;
    assert_eq!(
        store.artifact(&task.id, "ci/1").await?.as_deref(),
        Some("boom again")
    );
    Ok(())
}

async fn a_webhook_delivery_nudges_the_tasks_it_names_once(store: &Store) -> Result<()> {
    use mainloop_store::{SIGNAL_GITHUB, WebhookOutcome, WebhookTarget};
    let task = confirmed_task(store, "t1").await?;
    store
        .record_task(
            "alice",
            &task.id,
            &TaskProjection {
                status: Some(TaskStatus::ReadyForReview),
                detail: "ready".into(),
                issue_number: Some(12),
                pr_number: Some(13),
                branch: Some("feature/12-dark-mode".into()),
                ..TaskProjection::default()
            },
            None,
        )
        .await?;
    // Drain what confirming queued, so only nudges are left to see.
    for item in store
        .claim_outbox("test-relay", 50, Duration::from_secs(60))
        .await?
    {
        store.outbox_delivered(item.id).await?;
    }
    let by_pr = WebhookTarget {
        repo: "Acme/Web".into(),
        numbers: vec![13],
        branches: vec![],
    };
    let outcome = store
        .accept_github_delivery("d-1", "pull_request_review", &by_pr)
        .await?;
    assert_eq!(
        outcome,
        WebhookOutcome::Accepted {
            tasks: vec![task.id.clone()]
        }
    );
    let queued = store
        .claim_outbox("test-relay", 50, Duration::from_secs(60))
        .await?;
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].signal, SIGNAL_GITHUB);
    assert_eq!(queued[0].workflow_id, format!("task/{}", task.id));
    store.outbox_delivered(queued[0].id).await?;
    // A redelivery (or a replay) of the same delivery does nothing.
    assert_eq!(
        store
            .accept_github_delivery("d-1", "pull_request_review", &by_pr)
            .await?,
        WebhookOutcome::Duplicate
    );
    // A branch names the task too; another repository or number does not.
    let by_branch = WebhookTarget {
        repo: "acme/web".into(),
        numbers: vec![],
        branches: vec!["feature/12-dark-mode".into()],
    };
    assert!(matches!(
        store.accept_github_delivery("d-2", "check_suite", &by_branch).await?,
        WebhookOutcome::Accepted { tasks } if tasks.len() == 1
    ));
    for (delivery, target) in [
        (
            "d-3",
            WebhookTarget {
                repo: "acme/api".into(),
                numbers: vec![13],
                branches: vec![],
            },
        ),
        (
            "d-4",
            WebhookTarget {
                repo: "acme/web".into(),
                numbers: vec![99],
                branches: vec![],
            },
        ),
    ] {
        assert_eq!(
            store
                .accept_github_delivery(delivery, "issue_comment", &target)
                .await?,
            WebhookOutcome::Accepted { tasks: vec![] }
        );
    }
    // A task that is over is not nudged.
    store
        .record_task(
            "alice",
            &task.id,
            &TaskProjection {
                status: Some(TaskStatus::Merged),
                detail: "merged".into(),
                ..TaskProjection::default()
            },
            None,
        )
        .await?;
    assert_eq!(
        store
            .accept_github_delivery("d-5", "pull_request", &by_pr)
            .await?,
        WebhookOutcome::Accepted { tasks: vec![] }
    );
    Ok(())
}

/// The web app links a task's notes in the chat to the task's page.
async fn notes_name_the_task_they_are_about(store: &Store) -> Result<()> {
    let added = store
        .add_note("alice", "task-7/plan-ready", "Plan ready")
        .await?;
    assert_eq!(added.task_id.as_deref(), Some("task-7"));
    let user = store.accept_user_message("alice", "k", "hi", WF).await?;
    assert_eq!(user.message.task_id, None);
    let listed = store.list_messages("alice", None, 10).await?;
    let ids: Vec<_> = listed.iter().map(|m| m.task_id.as_deref()).collect();
    assert_eq!(ids, [Some("task-7"), None]);
    Ok(())
}

/// A task's news lands in the thread with the status it belongs to, and a retried record
/// (the same key) adds no second line and announces none.
async fn a_task_records_its_news_with_its_status_once(store: &Store) -> Result<()> {
    let task = confirmed_task(store, "t1").await?;
    let waiting = TaskProjection {
        status: Some(TaskStatus::WaitingPlanReview),
        detail: "plan ready".into(),
        ..TaskProjection::default()
    };
    let key = format!("{}/plan-ready", task.id);
    for _ in 0..2 {
        let recorded = store
            .record_task_with_note(
                "alice",
                &task.id,
                &waiting,
                None,
                Some((key.as_str(), "Plan ready")),
            )
            .await?;
        assert_eq!(recorded.status, TaskStatus::WaitingPlanReview);
    }
    let notes: Vec<_> = store
        .list_messages("alice", None, 50)
        .await?
        .into_iter()
        .filter(|m| m.kind == MessageKind::Note)
        .collect();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0].content, "Plan ready");
    assert_eq!(notes[0].task_id.as_deref(), Some(task.id.as_str()));
    let created = store
        .events_after("alice", 0, 100)
        .await?
        .into_iter()
        .filter(|e| e.kind == "message.created" && e.data["kind"] == "note")
        .count();
    assert_eq!(created, 1);
    Ok(())
}

async fn tasks_are_counted_by_status_for_every_status(store: &Store) -> Result<()> {
    let counts = store.count_tasks_by_status().await?;
    assert_eq!(counts.len(), TaskStatus::ALL.len());
    assert!(counts.iter().all(|(_, n)| *n == 0), "{counts:?}");
    confirmed_task(store, "t1").await?;
    let second = confirmed_task(store, "t2").await?;
    let merged = TaskProjection {
        status: Some(TaskStatus::Merged),
        ..TaskProjection::default()
    };
    store
        .record_task("alice", &second.id, &merged, None)
        .await?;
    let counts = store.count_tasks_by_status().await?;
    let count = |status| {
        counts
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, n)| *n)
            .unwrap_or(-1)
    };
    assert_eq!(count(TaskStatus::Merged), 1, "{counts:?}");
    assert_eq!(
        count(TaskStatus::Planning) + count(TaskStatus::Pending),
        1,
        "{counts:?}"
    );
    assert_eq!(counts.iter().map(|(_, n)| n).sum::<i64>(), 2);
    Ok(())
}
