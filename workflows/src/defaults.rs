//! Defaults of the workflows' settings: what production runs with unless configured.

use mainloop_activities::chat::{ActivityTiming, ThreadConfig};

pub fn thread_config() -> ThreadConfig {
    ThreadConfig {
        turns_per_run: 100,
        compaction_threshold: 40,
        keep_recent: 20,
        turn: ActivityTiming {
            start_to_close_ms: 10 * 60_000,
            heartbeat_ms: 30_000,
            retry_initial_ms: 1_000,
            retry_max_ms: 60_000,
            retry_attempts: 8,
        },
        compaction: ActivityTiming {
            start_to_close_ms: 5 * 60_000,
            heartbeat_ms: 0,
            retry_initial_ms: 2_000,
            retry_max_ms: 120_000,
            retry_attempts: 5,
        },
    }
}
