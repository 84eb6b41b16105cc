//! The agent's stdout: the only place protocol events are written.
//!
//! Several threads write here (the main loop, the Claude Code CLI's stderr reader, the signal
//! watcher), so every event is written as one line under the stdout lock and flushed at once:
//! a runner following the output sees each line as soon as it happens, never half of one.
//! The final result is guarded so exactly one is ever printed, whoever gets there first.

use std::io::Write as _;
use std::sync::Mutex;
use std::sync::PoisonError;

use mainloop_agent::protocol::{AgentEvent, AgentResult, LogSource, Outcome};

/// Longest log line forwarded from Claude's text and tool use; the whole transcript is not the
/// timeline's business, and a line per step keeps the log readable.
pub const CLAUDE_LOG_CHARS: usize = 300;

/// Set once the result line is out (to whether it was a success); anything after it would
/// break "exactly one result".
static RESULT_WRITTEN: Mutex<Option<bool>> = Mutex::new(None);

fn write_line(event: &AgentEvent) {
    let line = event.to_line();
    let mut stdout = std::io::stdout().lock();
    // A runner that stopped reading cannot be told anything on stdout; stderr is all that is
    // left, and the job carries on so it can still finish its push.
    if let Err(error) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        eprintln!("mainloop-agent: cannot write to stdout: {error}");
    }
}

/// A log line from the agent itself (cloning, git, set-up).
pub fn agent(text: impl Into<String>) {
    log(LogSource::Agent, text.into());
}

/// A log line from Claude (its text and tool use), shortened to one line.
pub fn claude(text: &str) {
    log(LogSource::Claude, one_line(text, CLAUDE_LOG_CHARS));
}

fn log(source: LogSource, text: String) {
    if RESULT_WRITTEN
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .is_some()
    {
        return;
    }
    write_line(&AgentEvent::Log { source, text });
}

/// Writes the result line unless one was already written. Returns whether this call wrote it.
pub fn result(result: &AgentResult) -> bool {
    let mut written = RESULT_WRITTEN
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if written.is_some() {
        return false;
    }
    write_line(&AgentEvent::Result(result.clone()));
    *written = Some(!matches!(result.outcome, Outcome::Failed { .. }));
    true
}

/// Whether the result line written (if any) was a success: the exit code must agree with it.
pub fn written_success() -> Option<bool> {
    *RESULT_WRITTEN
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// A result with nothing but a failure.
pub fn failed(error: impl Into<String>, retryable: bool) -> AgentResult {
    AgentResult {
        outcome: Outcome::Failed {
            error: error.into(),
            retryable,
        },
        summary: String::new(),
        usage: Default::default(),
    }
}

/// Collapses whitespace (newlines included) to single spaces and cuts to `max` characters,
/// marking the cut with an ellipsis.
pub fn one_line(text: &str, max: usize) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    truncate(&collapsed, max)
}

/// Cuts `text` to at most `max` characters (not bytes), marking the cut with an ellipsis.
pub fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_collapses_and_cuts_on_characters() {
        assert_eq!(one_line("a\n\n  b\tc", 10), "a b c");
        assert_eq!(one_line("ééééé", 3), "ééé…");
        assert_eq!(truncate("abc", 3), "abc");
    }
}
