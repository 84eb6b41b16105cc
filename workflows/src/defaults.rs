//! Defaults of the workflows' settings. The main thread falls back on them if its
//! configuration cannot be read; the CLI's defaults must produce exactly the same (a test in
//! the root package holds them together).

use mainloop_activities::chat::{ActivityTiming, ThreadConfig};

pub fn thread_config() -> ThreadConfig {
    ThreadConfig {
        turns_per_run: 100,
        history_limit: Some(1000),
        compaction_threshold: 40,
        keep_recent: 20,
        turn: ActivityTiming {
            start_to_close_ms: 10 * 60_000,
            heartbeat_ms: 30_000,
            retry_initial_ms: 1_000,
            retry_max_ms: 60_000,
            retry_attempts: 8,
        },
        compaction: compaction_timing(),
        task_queue: None,
        chat_queue: None,
        intake_queue: None,
    }
}

/// Compaction runs beside the conversation, so its pace needs no tuning: a summary that fails
/// is tried again after the next turn anyway.
pub fn compaction_timing() -> ActivityTiming {
    ActivityTiming {
        start_to_close_ms: 5 * 60_000,
        heartbeat_ms: 0,
        retry_initial_ms: 2_000,
        retry_max_ms: 120_000,
        retry_attempts: 5,
    }
}
