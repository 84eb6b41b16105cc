//! One session of the Claude Code CLI: starting it, the conversation with it on stdin and
//! stdout, and what it leaves behind (the plan, the questions, the final text, the usage).
//!
//! The CLI is driven the way the official Agent SDKs drive it: `-p --input-format stream-json
//! --output-format stream-json --verbose --permission-prompt-tool stdio`, the prompt sent as
//! the first user message on stdin. Plain `-p <prompt>` is not enough: in that mode the CLI
//! (2.1.x) disables `AskUserQuestion` and `ExitPlanMode` ("disabled for this session") and
//! refuses to write the plan file, although its plan-mode instructions tell the model to use
//! all three. With a permission host on stdio those tools are offered to the model, and every
//! call that needs a person arrives here as a `control_request` (`can_use_tool`) which we
//! answer: questions and the plan are captured and the call is denied with a message that
//! tells the model to end its turn; writes to the plan file are allowed; in plan mode nothing
//! else is.
//!
//! Stream-json quirks met on the way: the `result` line's keys are not ordered (`type` is not
//! first); each assistant message carries one content block; the input of an `ExitPlanMode`
//! tool use keeps the model's `plan` argument in the assistant message but not in the
//! permission request (the CLI strips it to its schema); `stop_reason` and per-message usage
//! are placeholders, so usage is read from the final `result` only.

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};

use mainloop_agent::protocol::{
    GITHUB_TOKEN_ENV, LogSource, Mode, Question, QuestionOption, SPEC_ENV, Usage,
};
use serde_json::{Value, json};

use crate::output;

/// The running CLI, shared with the signal watcher so a SIGTERM can kill it.
pub type ChildSlot = Arc<Mutex<Option<Child>>>;

/// How many of the CLI's last stderr lines go into an error message.
const STDERR_TAIL: usize = 12;

/// Everything needed to run one session.
#[derive(Debug)]
pub struct Session<'a> {
    pub bin: &'a Path,
    /// The clone: the CLI's working directory (the old agent ran it in the workspace above).
    pub cwd: &'a Path,
    pub model: &'a str,
    pub mode: Mode,
    pub prompt: &'a str,
}

/// Why a session produced nothing usable.
#[derive(Debug)]
pub enum SessionError {
    /// The CLI could not be started; running again will not help.
    Spawn(String),
    /// The CLI refused to run with these settings (e.g. root without a sandbox).
    Refused(String),
    /// It ended without a `result` message (crashed, killed).
    NoResult(String),
}

/// The final `result` message.
pub use mainloop_agent::cli_result::CliResult as Finished;

/// What a session left behind.
#[derive(Debug, Default)]
pub struct Transcript {
    /// The `plan` argument of the last top-level `ExitPlanMode` call.
    pub exit_plan: Option<String>,
    pub exit_plan_called: bool,
    /// The plan file the model wrote (Claude Code's `~/.claude/plans/*.md`).
    pub plan_file: Option<PathBuf>,
    pub questions: Vec<Question>,
    /// The last top-level assistant text.
    pub last_text: Option<String>,
    pub finished: Option<Finished>,
}

/// What to do after one line of the CLI's output.
#[derive(Debug, Default, PartialEq)]
pub struct Step {
    pub logs: Vec<(LogSource, String)>,
    /// A message to write to the CLI's stdin.
    pub reply: Option<Value>,
    /// The session is over: stdin can be closed so the CLI exits.
    pub finished: bool,
}

impl Step {
    fn log(&mut self, source: LogSource, text: impl Into<String>) {
        self.logs.push((source, text.into()));
    }
}

/// Runs the CLI to the end of its first turn.
///
/// # Errors
/// When it cannot start, refuses to run, or ends without a `result`.
pub fn run(session: &Session<'_>, slot: &ChildSlot) -> Result<Transcript, SessionError> {
    let permission_mode = match session.mode {
        Mode::Plan => "plan",
        _ => "bypassPermissions",
    };
    let mut command = Command::new(session.bin);
    command
        .args([
            "-p",
            "--input-format",
            "stream-json",
            "--output-format",
            "stream-json",
            "--verbose",
            "--permission-prompt-tool",
            "stdio",
            "--model",
            session.model,
            "--permission-mode",
            permission_mode,
        ])
        .current_dir(session.cwd)
        // The model never needs the GitHub token (the harness pushes), so its tools cannot
        // leak or misuse it.
        .env_remove(GITHUB_TOKEN_ENV)
        .env_remove("GH_TOKEN")
        .env_remove(SPEC_ENV)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // A job is short-lived and must not update itself or phone home; the image sets these,
    // the local runner may not.
    for name in [
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
        "DISABLE_AUTOUPDATER",
    ] {
        if std::env::var_os(name).is_none() {
            command.env(name, "1");
        }
    }

    let mut child = command.spawn().map_err(|error| {
        SessionError::Spawn(format!(
            "cannot start the Claude Code CLI `{}`: {error}",
            session.bin.display()
        ))
    })?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        crate::tree::kill(&mut child);
        return Err(SessionError::Spawn(
            "the Claude Code CLI started without its pipes".to_owned(),
        ));
    };
    *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(child);

    let stderr_reader = std::thread::Builder::new()
        .name("claude-stderr".to_owned())
        .spawn(move || {
            let mut tail = VecDeque::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.trim().is_empty() {
                    continue;
                }
                output::agent(format!("claude: {}", output::one_line(&line, 500)));
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            Vec::from(tail)
        });

    let mut transcript = Transcript::default();
    let mut stdin = Some(stdin);
    let first = json!({
        "type": "user",
        "message": {"role": "user", "content": session.prompt},
        "parent_tool_use_id": null,
        "session_id": "",
    });
    send(&mut stdin, &first);

    for line in BufReader::new(stdout).lines() {
        let line = match line {
            Ok(line) => line,
            Err(error) => {
                output::agent(format!("cannot read Claude Code's output: {error}"));
                break;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let step = match serde_json::from_str::<Value>(&line) {
            Ok(message) => transcript.handle(&message, session.mode),
            Err(_) => {
                let mut step = Step::default();
                step.log(
                    LogSource::Agent,
                    format!("claude: {}", output::one_line(&line, 500)),
                );
                step
            }
        };
        for (source, text) in step.logs {
            match source {
                LogSource::Claude => output::claude(&text),
                LogSource::Agent => output::agent(text),
            }
        }
        if let Some(reply) = step.reply {
            send(&mut stdin, &reply);
        }
        if step.finished {
            // Closing stdin is how a stream-json session is ended; the CLI then exits.
            stdin = None;
        }
    }
    drop(stdin);

    let status = wait(slot);
    let stderr_tail = match stderr_reader {
        Ok(handle) => handle.join().unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    if transcript.finished.is_some() {
        if let Some(status) = status.filter(|s| !s.success()) {
            output::agent(format!("Claude Code exited with {status}"));
        }
        return Ok(transcript);
    }
    let tail = stderr_tail.join("\n");
    if tail.contains("cannot be used with root") {
        return Err(SessionError::Refused(format!(
            "Claude Code refuses to bypass permissions as root: run the agent as a non-root user \
             (or set IS_SANDBOX=1 inside a sandbox): {tail}"
        )));
    }
    let how = match status {
        Some(status) => format!("exited with {status}"),
        None => "was stopped".to_owned(),
    };
    Err(SessionError::NoResult(if tail.is_empty() {
        format!("Claude Code {how} without a result")
    } else {
        format!("Claude Code {how} without a result: {tail}")
    }))
}

fn send(stdin: &mut Option<ChildStdin>, message: &Value) {
    let Some(pipe) = stdin else { return };
    let line = format!("{message}\n");
    if let Err(error) = pipe.write_all(line.as_bytes()).and_then(|()| pipe.flush()) {
        // The CLI has gone; its exit and stderr tell the rest.
        output::agent(format!("cannot write to Claude Code: {error}"));
        *stdin = None;
    }
}

/// Waits for the CLI to exit. `None` when the signal watcher took it to kill it.
fn wait(slot: &ChildSlot) -> Option<ExitStatus> {
    // Taken out of the slot before waiting, so a SIGTERM meanwhile is not blocked on the lock.
    let child = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    let mut child = child?;
    match child.wait() {
        Ok(status) => Some(status),
        Err(error) => {
            output::agent(format!("cannot wait for Claude Code: {error}"));
            None
        }
    }
}

impl Transcript {
    /// Takes in one message of the CLI's stream-json output.
    pub fn handle(&mut self, message: &Value, mode: Mode) -> Step {
        let mut step = Step::default();
        match str_at(message, "type") {
            "system" if str_at(message, "subtype") == "init" => {
                step.log(
                    LogSource::Agent,
                    format!(
                        "Claude Code {} started in {} (model {}, permission mode {})",
                        str_at(message, "claude_code_version"),
                        str_at(message, "cwd"),
                        str_at(message, "model"),
                        str_at(message, "permissionMode"),
                    ),
                );
            }
            "assistant" => self.assistant(message, &mut step),
            "result" => {
                let finished = Finished::parse(message);
                step.log(
                    LogSource::Agent,
                    format!(
                        "Claude Code finished ({}{}, {} turns, ${:.4})",
                        finished.subtype,
                        if finished.is_error { ", error" } else { "" },
                        message
                            .get("num_turns")
                            .and_then(Value::as_u64)
                            .unwrap_or(0),
                        finished.usage.cost_usd,
                    ),
                );
                self.finished = Some(finished);
                step.finished = true;
            }
            "control_request" => self.control_request(message, mode, &mut step),
            _ => {}
        }
        step
    }

    fn assistant(&mut self, message: &Value, step: &mut Step) {
        // Subagents' messages carry the tool use that started them; only the main
        // conversation's tool use decides the plan and the questions.
        let top_level = message.get("parent_tool_use_id").is_none_or(Value::is_null);
        let blocks = message
            .pointer("/message/content")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for block in blocks {
            match str_at(block, "type") {
                "text" => {
                    let text = str_at(block, "text");
                    if text.trim().is_empty() {
                        continue;
                    }
                    step.log(LogSource::Claude, text);
                    if top_level {
                        self.last_text = Some(text.to_owned());
                    }
                }
                "tool_use" => {
                    let name = str_at(block, "name");
                    let input = block.get("input").unwrap_or(&Value::Null);
                    step.log(LogSource::Claude, describe_tool(name, input));
                    if top_level {
                        self.capture_tool_use(name, input);
                    }
                }
                _ => {}
            }
        }
    }

    fn capture_tool_use(&mut self, name: &str, input: &Value) {
        match name {
            "ExitPlanMode" => {
                self.exit_plan_called = true;
                if let Some(plan) = input
                    .get("plan")
                    .and_then(Value::as_str)
                    .filter(|p| !p.trim().is_empty())
                {
                    self.exit_plan = Some(plan.to_owned());
                }
            }
            "AskUserQuestion" => {
                let asked = input
                    .get("questions")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                for question in asked {
                    add_question(&mut self.questions, question);
                }
            }
            "Write" | "Edit" | "MultiEdit" => {
                let path = str_at(input, "file_path");
                if is_plan_file(path) {
                    self.plan_file = Some(PathBuf::from(path));
                }
            }
            _ => {}
        }
    }

    fn control_request(&mut self, message: &Value, mode: Mode, step: &mut Step) {
        let request_id = str_at(message, "request_id");
        let request = message.get("request").unwrap_or(&Value::Null);
        let subtype = str_at(request, "subtype");
        if subtype != "can_use_tool" {
            step.reply = Some(json!({
                "type": "control_response",
                "response": {
                    "subtype": "error",
                    "request_id": request_id,
                    "error": format!("mainloop-agent does not handle `{subtype}` requests"),
                },
            }));
            return;
        }
        let tool = str_at(request, "tool_name");
        let input = request.get("input").cloned().unwrap_or_else(|| json!({}));
        let decision = decide(mode, tool, &input);
        let response = match &decision {
            Decision::Allow => json!({"behavior": "allow", "updatedInput": input}),
            Decision::Deny(message) => {
                step.log(
                    LogSource::Agent,
                    format!("answered {tool}: {}", output::one_line(message, 160)),
                );
                json!({"behavior": "deny", "message": message})
            }
        };
        step.reply = Some(json!({
            "type": "control_response",
            "response": {"subtype": "success", "request_id": request_id, "response": response},
        }));
    }

    /// The plan: `ExitPlanMode`'s argument, else the plan file the model wrote, else its final
    /// text.
    pub fn plan(&self) -> Option<String> {
        let from_file = || {
            let path = self.plan_file.as_ref()?;
            match std::fs::read_to_string(path) {
                Ok(text) => Some(text),
                Err(error) => {
                    output::agent(format!(
                        "cannot read the plan file {}: {error}",
                        path.display()
                    ));
                    None
                }
            }
        };
        self.exit_plan
            .clone()
            .or_else(from_file)
            .or_else(|| self.final_text())
            .filter(|plan| !plan.trim().is_empty())
    }

    /// The model's last words: the `result` text, else its last message.
    pub fn final_text(&self) -> Option<String> {
        self.finished
            .as_ref()
            .filter(|f| !f.is_error)
            .map(|f| f.text.clone())
            .filter(|t| !t.trim().is_empty())
            .or_else(|| self.last_text.clone())
    }

    pub fn usage(&self) -> Usage {
        self.finished.as_ref().map(|f| f.usage).unwrap_or_default()
    }
}

#[derive(Debug, PartialEq)]
enum Decision {
    Allow,
    Deny(String),
}

/// Answers a permission request. Only tools that need a person (or, in plan mode, that would
/// change something) get here; the permission mode has let everything else through already.
fn decide(mode: Mode, tool: &str, input: &Value) -> Decision {
    let deny = |message: &str| Decision::Deny(message.to_owned());
    match (mode, tool) {
        (Mode::Plan, "AskUserQuestion") => deny(
            "Your questions have been recorded and will be put to the user after this session; \
             nobody can answer during it. You will be run again with their answers. End your \
             turn now, without further tool calls.",
        ),
        (Mode::Plan, "ExitPlanMode") => deny(
            "Your plan has been submitted for the user's review; it will be implemented in a \
             later session once approved. Planning is complete: end your turn now with a \
             one-sentence note, without further tool calls.",
        ),
        (Mode::Plan, "Write" | "Edit" | "MultiEdit")
            if is_plan_file(str_at(input, "file_path")) =>
        {
            Decision::Allow
        }
        (Mode::Plan, _) => deny(
            "This is a read-only planning session: that action is not allowed. Continue with \
             read-only exploration and put the changes into the plan.",
        ),
        (_, "AskUserQuestion") => deny(
            "Nobody can answer questions during this session. Make the most reasonable choice \
             yourself, say so in your final summary, and carry on.",
        ),
        (_, "ExitPlanMode" | "EnterPlanMode") => deny(
            "Plan mode is not used in this session: the plan is already approved. Carry on \
             with the work.",
        ),
        _ => Decision::Allow,
    }
}

/// Claude Code keeps plans in `~/.claude/plans/*.md`; the only files plan mode may write.
fn is_plan_file(path: &str) -> bool {
    let path = Path::new(path);
    path.is_absolute()
        && path.extension().is_some_and(|e| e == "md")
        && path
            .parent()
            .is_some_and(|dir| dir.ends_with(".claude/plans"))
        && !path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
}

/// Adds an `AskUserQuestion` question unless one with the same header was asked already.
fn add_question(questions: &mut Vec<Question>, raw: &Value) {
    let header = str_at(raw, "header").trim();
    let text = str_at(raw, "question").trim();
    if header.is_empty() && text.is_empty() {
        return;
    }
    let header = if header.is_empty() { text } else { header };
    if questions
        .iter()
        .any(|q| q.header.eq_ignore_ascii_case(header))
    {
        return;
    }
    // Ids come from the header so a retried plan job asks with the same ids; two headers that
    // slug alike get numbered.
    let base = slug(header);
    let mut id = base.clone();
    let mut n = 2;
    while questions.iter().any(|q| q.id == id) {
        id = format!("{base}-{n}");
        n += 1;
    }
    let options = raw
        .get("options")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|option| {
            let label = str_at(option, "label").trim();
            (!label.is_empty()).then(|| QuestionOption {
                label: label.to_owned(),
                description: option
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(str::to_owned),
            })
        })
        .collect();
    questions.push(Question {
        id,
        header: header.to_owned(),
        question: if text.is_empty() { header } else { text }.to_owned(),
        options,
        multi_select: raw.get("multiSelect").and_then(Value::as_bool) == Some(true),
    });
}

/// Lower-case ASCII letters and digits, runs of anything else as one `-`.
pub fn slug(text: &str) -> String {
    let mut slug = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-');
    if slug.is_empty() {
        "question".to_owned()
    } else {
        output::truncate(slug, 48).trim_end_matches('…').to_owned()
    }
}

/// One line on what a tool call does, from the input field that says most.
fn describe_tool(name: &str, input: &Value) -> String {
    let field = |key: &str| input.get(key).and_then(Value::as_str).unwrap_or_default();
    let detail = match name {
        "Bash" => field("command").to_owned(),
        "Read" | "Write" | "Edit" | "MultiEdit" | "NotebookEdit" => {
            let path = field("file_path");
            if path.is_empty() {
                field("notebook_path").to_owned()
            } else {
                path.to_owned()
            }
        }
        "Grep" | "Glob" => field("pattern").to_owned(),
        "WebFetch" => field("url").to_owned(),
        "WebSearch" => field("query").to_owned(),
        "Task" | "Agent" => field("description").to_owned(),
        "TodoWrite" => "updating the to-do list".to_owned(),
        "ExitPlanMode" => "submitting the plan".to_owned(),
        "AskUserQuestion" => input
            .get("questions")
            .and_then(Value::as_array)
            .map(|qs| {
                qs.iter()
                    .map(|q| str_at(q, "question"))
                    .collect::<Vec<_>>()
                    .join(" / ")
            })
            .unwrap_or_default(),
        _ => String::new(),
    };
    let detail = if detail.is_empty() {
        input.to_string()
    } else {
        detail
    };
    format!("→ {name}: {detail}")
}

fn str_at<'v>(value: &'v Value, key: &str) -> &'v str {
    value.get(key).and_then(Value::as_str).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assistant(blocks: Value) -> Value {
        json!({"type": "assistant", "message": {"content": blocks}, "parent_tool_use_id": null})
    }

    #[test]
    fn questions_get_stable_ids_from_headers_and_are_deduplicated() {
        let mut transcript = Transcript::default();
        let ask = assistant(
            json!([{"type": "tool_use", "name": "AskUserQuestion", "input": {"questions": [
                {"question": "Which database?", "header": "Database", "multiSelect": false,
                 "options": [{"label": "Postgres", "description": "big"}, {"label": "SQLite"}]},
                {"question": "Which auth?", "header": "Auth method!", "multiSelect": true, "options": []},
                {"question": "Again?", "header": "database", "options": []},
                {"question": "Other db?", "header": "Database?", "options": []},
            ]}}]),
        );
        transcript.handle(&ask, Mode::Plan);
        let ids: Vec<&str> = transcript.questions.iter().map(|q| q.id.as_str()).collect();
        assert_eq!(ids, ["database", "auth-method", "database-2"]);
        let first = &transcript.questions[0];
        assert_eq!(first.question, "Which database?");
        assert_eq!(first.options[0].description.as_deref(), Some("big"));
        assert_eq!(first.options[1].description, None);
        assert!(transcript.questions[1].multi_select);
    }

    #[test]
    fn the_plan_comes_from_exit_plan_mode_then_the_plan_file_then_the_final_text() {
        let mut transcript = Transcript::default();
        transcript.handle(
            &json!({"type": "result", "subtype": "success", "is_error": false, "result": "final words",
                    "usage": {"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": 5},
                    "total_cost_usd": 0.5}),
            Mode::Plan,
        );
        assert_eq!(transcript.plan().as_deref(), Some("final words"));
        assert_eq!(transcript.usage().cache_read_input_tokens, 5);
        assert_eq!(transcript.usage().cost_usd, 0.5);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(".claude/plans/p.md");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "from the file").unwrap();
        let write = assistant(json!([{"type": "tool_use", "name": "Write",
            "input": {"file_path": file.to_str().unwrap(), "content": "x"}}]));
        transcript.handle(&write, Mode::Plan);
        assert_eq!(transcript.plan().as_deref(), Some("from the file"));

        let exit = assistant(
            json!([{"type": "tool_use", "name": "ExitPlanMode", "input": {"plan": "# The plan"}}]),
        );
        transcript.handle(&exit, Mode::Plan);
        assert_eq!(transcript.plan().as_deref(), Some("# The plan"));
    }

    #[test]
    fn subagent_tool_use_does_not_count() {
        let mut transcript = Transcript::default();
        let nested = json!({"type": "assistant", "parent_tool_use_id": "toolu_1", "message": {"content": [
            {"type": "tool_use", "name": "ExitPlanMode", "input": {"plan": "nested"}}]}});
        let step = transcript.handle(&nested, Mode::Plan);
        assert_eq!(transcript.exit_plan, None);
        assert_eq!(
            step.logs,
            [(
                LogSource::Claude,
                "→ ExitPlanMode: submitting the plan".to_owned()
            )]
        );
    }

    #[test]
    fn permission_requests_are_answered_by_mode() {
        let plan_file = "/home/agent/.claude/plans/calm-otter.md";
        assert_eq!(
            decide(Mode::Plan, "Write", &json!({"file_path": plan_file})),
            Decision::Allow
        );
        assert!(matches!(
            decide(Mode::Plan, "Write", &json!({"file_path": "/repo/src/x.rs"})),
            Decision::Deny(_)
        ));
        assert!(matches!(
            decide(Mode::Plan, "Bash", &json!({"command": "rm -rf x"})),
            Decision::Deny(_)
        ));
        assert!(
            matches!(decide(Mode::Plan, "ExitPlanMode", &json!({})), Decision::Deny(m) if m.contains("submitted"))
        );
        assert!(
            matches!(decide(Mode::Implement, "AskUserQuestion", &json!({})), Decision::Deny(m) if m.contains("reasonable"))
        );
        assert_eq!(
            decide(Mode::Fix, "Write", &json!({"file_path": "/repo/.git/x"})),
            Decision::Allow
        );
        assert!(!is_plan_file("/home/agent/.claude/plans/../../.bashrc.md"));
        assert!(!is_plan_file(".claude/plans/relative.md"));

        let mut transcript = Transcript::default();
        let request = json!({"type": "control_request", "request_id": "r1", "request": {
            "subtype": "can_use_tool", "tool_name": "Write", "input": {"file_path": plan_file, "content": "c"}}});
        let step = transcript.handle(&request, Mode::Plan);
        assert_eq!(
            step.reply,
            Some(json!({"type": "control_response", "response": {
            "subtype": "success", "request_id": "r1",
            "response": {"behavior": "allow", "updatedInput": {"file_path": plan_file, "content": "c"}}}}))
        );

        let unknown = json!({"type": "control_request", "request_id": "r2", "request": {"subtype": "hook_callback"}});
        let reply = transcript.handle(&unknown, Mode::Plan).reply.unwrap();
        assert_eq!(reply["response"]["subtype"], "error");
    }

    #[test]
    fn an_error_result_is_a_failure_with_its_text() {
        let mut transcript = Transcript::default();
        let step = transcript.handle(
            &json!({"subtype": "success", "is_error": true, "result": "API Error: 400 boom", "type": "result"}),
            Mode::Fix,
        );
        assert!(step.finished);
        let finished = transcript.finished.as_ref().unwrap();
        assert!(finished.is_error);
        assert_eq!(finished.text, "API Error: 400 boom");
        assert_eq!(transcript.final_text(), None);

        let mut transcript = Transcript::default();
        transcript.handle(
            &json!({"type": "result", "subtype": "error_max_turns", "is_error": false}),
            Mode::Fix,
        );
        assert!(transcript.finished.unwrap().is_error);
    }

    #[test]
    fn tool_use_is_described_in_one_line() {
        assert_eq!(
            describe_tool("Bash", &json!({"command": "cargo test"})),
            "→ Bash: cargo test"
        );
        assert_eq!(
            describe_tool("Read", &json!({"file_path": "/r/a.rs"})),
            "→ Read: /r/a.rs"
        );
        assert_eq!(
            describe_tool("Mystery", &json!({"a": 1})),
            "→ Mystery: {\"a\":1}"
        );
        assert_eq!(slug("  Auth   method? "), "auth-method");
        assert_eq!(slug("???"), "question");
    }
}
