//! A long conversation: hundreds of turns through several continue-as-new runs, compacted
//! along the way. None lost, none answered twice, every message summarised exactly once.

use std::collections::HashMap;

use anyhow::{Context, Result};
use mainloop_testkit::anthropic::Reply;

use crate::harness::{Stack, USER, WAIT, asked, assert_one_reply_each, is_summary, main_thread};

const MESSAGES: usize = 200;

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_messages_pass_through_continue_as_new_and_compaction_exactly_once()
-> Result<()> {
    let stack = Stack::start_with(&[
        ("MAINLOOP_TURNS_PER_RUN", "60"),
        ("MAINLOOP_COMPACTION_THRESHOLD", "16"),
        ("MAINLOOP_KEEP_RECENT", "6"),
        ("MAINLOOP_HISTORY_LIMIT", "10"),
    ])
    .await?;
    // Summaries are short and numbered so that what a summary request carries as new
    // messages can be told apart from the summary it extends.
    stack.anthropic.set_default(|request| {
        if is_summary(request) {
            Reply::text(format!("summary-{}", request.messages().len()))
        } else {
            Reply::text(format!(
                "reply to {}",
                request.last_user_text().unwrap_or_default()
            ))
        }
    });
    for i in 0..MESSAGES {
        stack
            .post(&format!("msg-{i:03}"), &format!("k-{i}"))
            .await?;
    }
    let thread = stack.wait_for_replies(MESSAGES, WAIT * 5).await?;
    assert_eq!(thread.len(), 2 * MESSAGES);
    assert_one_reply_each(&thread);
    for message in thread.iter().filter(|m| m.reply_to.is_some()) {
        assert!(message.content.starts_with("reply to msg-"), "{message:?}");
    }

    // One turn per message, in order.
    let asked: Vec<String> = asked(&stack.anthropic);
    let expected: Vec<String> = (0..MESSAGES).map(|i| format!("msg-{i:03}")).collect();
    assert_eq!(asked, expected);

    // At least three continue-as-new runs.
    let state = stack.thread_state().await?;
    let runs = state["runs"]
        .as_u64()
        .with_context(|| format!("no runs in {state}"))?;
    assert!(runs >= 4, "only {runs} runs: {state}");
    let listed = crate::histories::runs_of(&stack, &main_thread()).await?;
    let continued = listed
        .iter()
        .filter(|run| {
            run["status"]
                .as_str()
                .is_some_and(|status| status.contains("CONTINUED_AS_NEW"))
        })
        .count();
    assert!(continued >= 3, "{listed:?}");

    // Each message (user and assistant) went into exactly one summary request as a new message.
    let mut summarised: HashMap<String, usize> = HashMap::new();
    for request in stack.anthropic.requests().iter().filter(|r| is_summary(r)) {
        let text = request.last_user_text().unwrap_or_default();
        let new = text
            .split("<new_messages>")
            .nth(1)
            .and_then(|rest| rest.split("</new_messages>").next())
            .context("no new messages in a summary request")?;
        for line in new.lines().filter(|l| !l.trim().is_empty()) {
            *summarised.entry(line.trim().to_string()).or_default() += 1;
        }
    }
    assert!(!summarised.is_empty(), "nothing was compacted");
    let repeated: Vec<_> = summarised.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "summarised more than once: {repeated:?}"
    );
    // The ledger agrees: contiguous ranges, each message once.
    let compactions = stack.store.compactions(USER).await?;
    for pair in compactions.windows(2) {
        assert_eq!(pair[0].through_seq + 1, pair[1].from_seq, "{compactions:?}");
    }
    let folded: i64 = compactions.iter().map(|c| c.message_count).sum();
    assert_eq!(folded as usize, summarised.len());
    let (_, through) = stack.store.summary(USER).await?;
    assert_eq!(
        through,
        compactions.last().map(|c| c.through_seq).unwrap_or(0)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_summary_that_never_returns_holds_up_no_reply() -> Result<()> {
    let stack = Stack::start_with(&[
        ("MAINLOOP_COMPACTION_THRESHOLD", "4"),
        ("MAINLOOP_KEEP_RECENT", "2"),
    ])
    .await?;
    stack.anthropic.set_default(|request| {
        if is_summary(request) {
            // Far longer than the test: the summary is still pending when it ends.
            Reply::text("summary").with_first_token_delay(std::time::Duration::from_secs(3600))
        } else {
            Reply::text(format!(
                "reply to {}",
                request.last_user_text().unwrap_or_default()
            ))
        }
    });
    for i in 0..8 {
        stack.post(&format!("msg-{i}"), &format!("k-{i}")).await?;
    }
    let thread = stack.wait_for_replies(8, WAIT).await?;
    assert_one_reply_each(&thread);
    let summaries = stack
        .anthropic
        .requests()
        .iter()
        .filter(|r| is_summary(r))
        .count();
    assert_eq!(
        summaries, 1,
        "one compaction runs at a time, beside the turns"
    );
    assert!(stack.store.compactions(USER).await?.is_empty());
    Ok(())
}
