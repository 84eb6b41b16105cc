//! The `mainloop-agent` job: one step of a worker task (plan, implement, fix or feedback) run
//! by the Claude Code CLI in a fresh clone. This library is also the wire protocol between the
//! agent and the job runners in `mainloop-activities`: the spec goes in as JSON in the
//! `MAINLOOP_AGENT_SPEC` environment variable, events come out as JSON lines on stdout. It
//! also reads the Claude Code CLI's final `result` line, which the chat needs too.

pub mod cli_result;
pub mod protocol;
