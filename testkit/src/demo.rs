//! The demo of `mainloop dev --demo`: the fakes set up so that anyone can try the whole flow
//! with no accounts. A scripted model stands in for Claude, both as the chat model and as the
//! worker agents' model behind the Claude Code CLI, and a fake GitHub holds one small
//! repository, [`DEMO_REPO`], whose CI fails once so that a fix job can be seen. Once a pull
//! request is ready for review, the demo merges it after a while, as the demo user would.
//!
//! The stack tests use the same script, so what the demo shows is what is tested.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::anthropic::{FakeAnthropic, RecordedRequest, Reply, content_text};
use crate::github::{CiScript, CiSetup, FakeGitHub, GitHubView, Permission};

/// The demo repository's owner.
pub const DEMO_OWNER: &str = "demo";
/// The demo repository's name.
pub const DEMO_NAME: &str = "hello";
/// The one repository of the demo's GitHub; every proposal is for it.
pub const DEMO_REPO: &str = "demo/hello";
/// The account that stands for the person trying the demo: a writer on [`DEMO_REPO`], and the
/// one who merges ready pull requests.
pub const DEMO_USER: &str = "demo-user";
/// The API key the demo's model accepts (it is only good for the fake).
pub const DEMO_API_KEY: &str = "mainloop-demo-key";
/// The worker agents' model in the demo.
pub const DEMO_WORKER_MODEL: &str = "claude-sonnet-4-5";

const README: &str = "# hello\n\n\
The demo repository of `mainloop dev --demo`. It lives in a fake GitHub inside mainloop and is \
gone when mainloop stops, so ask for any change you like.\n";
const CARGO_TOML: &str = "[package]\nname = \"hello\"\nversion = \"0.1.0\"\nedition = \"2021\"\n";
const LIB_RS: &str = "//! Says hello.\n\n\
/// A greeting for `name`.\n\
pub fn hello(name: &str) -> String {\n    format!(\"Hello, {name}!\")\n}\n";

/// How the demo behaves.
#[derive(Debug, Clone)]
pub struct DemoSettings {
    /// How long after a pull request is marked ready for review the demo merges it as
    /// [`DEMO_USER`].
    pub merge_after: Duration,
    /// Delay between the streamed words of the model, so that replies visibly stream.
    pub token_delay: Duration,
    /// The demo repository's CI.
    pub ci: CiSetup,
}

impl Default for DemoSettings {
    fn default() -> Self {
        Self {
            merge_after: Duration::from_secs(30),
            token_delay: Duration::from_millis(15),
            ci: CiScript::FailTimes(1).into(),
        }
    }
}

/// The running demo: the fake Anthropic API answering with [`demo_model`], the fake GitHub
/// with [`DEMO_REPO`], the task that merges ready pull requests, and a fresh directory for the
/// state of the run (removed when the demo is dropped).
pub struct Demo {
    anthropic: FakeAnthropic,
    github: FakeGitHub,
    user_token: String,
    stop: CancellationToken,
    merger: Mutex<Option<JoinHandle<()>>>,
    state_dir: tempfile::TempDir,
    webhook_secret: String,
}

impl Demo {
    /// Starts both fakes on free loopback ports and seeds the demo repository.
    ///
    /// # Errors
    /// If a port cannot be bound, a directory cannot be made, or git fails.
    pub async fn start(settings: DemoSettings) -> anyhow::Result<Demo> {
        let state_dir = tempfile::Builder::new()
            .prefix("mainloop-demo-")
            .tempdir()
            .context("creating the demo's state directory")?;
        let anthropic = FakeAnthropic::builder()
            .api_key(DEMO_API_KEY)
            .start()
            .await?;
        anthropic.set_default(demo_model);
        anthropic.set_token_delay(settings.token_delay);
        let github = FakeGitHub::start().await?;
        let files = [
            ("README.md", README),
            ("Cargo.toml", CARGO_TOML),
            ("src/lib.rs", LIB_RS),
            (".gitignore", "/target\n"),
        ];
        github
            .create_repo_with_files(DEMO_OWNER, DEMO_NAME, &files)
            .await?;
        github.set_ci(DEMO_REPO, settings.ci)?;
        let user_token = github.add_user(DEMO_USER);
        github.add_collaborator(DEMO_REPO, DEMO_USER, Permission::Write)?;
        let stop = CancellationToken::new();
        let merger = tokio::spawn(merge_ready_pulls(
            github.clone(),
            settings.merge_after,
            stop.clone(),
        ));
        Ok(Demo {
            anthropic,
            github,
            user_token,
            stop,
            merger: Mutex::new(Some(merger)),
            state_dir,
            webhook_secret: uuid::Uuid::new_v4().simple().to_string(),
        })
    }

    /// The secret the demo's GitHub signs its webhook deliveries with, made for this run.
    pub fn webhook_secret(&self) -> &str {
        &self.webhook_secret
    }

    /// From now on, the demo's GitHub delivers its webhooks to `url`, signed with
    /// [`Demo::webhook_secret`].
    pub fn deliver_webhooks_to(&self, url: &str) {
        self.github.deliver_webhooks_to(url, &self.webhook_secret);
    }

    pub fn anthropic(&self) -> &FakeAnthropic {
        &self.anthropic
    }

    pub fn github(&self) -> &FakeGitHub {
        &self.github
    }

    /// [`DEMO_USER`]'s token for the fake GitHub's REST API, to look at issues and pull
    /// requests as a user would.
    pub fn user_token(&self) -> &str {
        &self.user_token
    }

    /// A fresh directory for this run's state; removed when the demo is dropped.
    pub fn state_dir(&self) -> &Path {
        self.state_dir.path()
    }

    /// Stops merging, then both servers, and waits for them to close their sockets. The state
    /// directory stays until the demo is dropped.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let merger = self
            .merger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(merger) = merger
            && let Err(error) = merger.await
        {
            tracing::warn!(%error, "the demo's merging task failed");
        }
        self.github.shutdown().await;
        self.anthropic.shutdown().await;
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Open pull requests of the demo repository that are ready for review and not yet handled.
fn ready_pulls(view: &GitHubView<'_>, handled: &HashSet<u64>) -> Vec<u64> {
    view.pulls(DEMO_REPO)
        .into_iter()
        .filter(|p| {
            p.state == crate::github::IssueState::Open
                && !p.draft
                && !p.merged
                && !handled.contains(&p.number)
        })
        .map(|p| p.number)
        .collect()
}

/// Merges each pull request of the demo repository `after` it is marked ready for review, as
/// [`DEMO_USER`] pressing the merge button, until `stop`.
async fn merge_ready_pulls(github: FakeGitHub, after: Duration, stop: CancellationToken) {
    let mut handled = HashSet::new();
    loop {
        let waited = tokio::select! {
            () = stop.cancelled() => return,
            waited = github.wait_until(Duration::from_secs(3600), |v| {
                !ready_pulls(v, &handled).is_empty()
            }) => waited,
        };
        if waited.is_err() {
            continue;
        }
        let ready = github.view(|v| ready_pulls(v, &handled));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(after) => {}
        }
        for number in ready {
            handled.insert(number);
            match github.merge_pr_as(DEMO_USER, DEMO_REPO, number).await {
                Ok(_) => tracing::info!("demo: {DEMO_USER} merged {DEMO_REPO}#{number}"),
                Err(error) => {
                    tracing::warn!("demo: could not merge {DEMO_REPO}#{number}: {error:#}")
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The scripted model
// ---------------------------------------------------------------------------------------------

/// What the demo's model answers, from the request alone:
/// - as the chat model (its tools include `propose_task`): a change request gets a
///   `propose_task` for [`DEMO_REPO`], anything else an explanation of the demo;
/// - as a worker agent (a Claude Code CLI session): a plan through `ExitPlanMode`, and
///   implementation, CI fixes and review feedback as file edits with the `Bash` tool, then a
///   short summary;
/// - anything else (a summary of the conversation, say): a short text.
pub fn demo_model(request: &RecordedRequest) -> Reply {
    let tools = request.tool_names();
    if tools.iter().any(|t| t == "propose_task") {
        chat_reply(request)
    } else if tools.is_empty() {
        Reply::text(
            "The user is trying mainloop's demo: a scripted model and a fake GitHub with the \
             repository demo/hello.",
        )
        .with_usage(200, 20)
    } else {
        agent_reply(request)
    }
}

/// The input of the first `tool_use` block of the last assistant message.
fn last_tool_input(request: &RecordedRequest) -> Option<&Value> {
    request
        .messages()
        .iter()
        .rev()
        .find(|m| m["role"] == "assistant")
        .and_then(|m| m["content"].as_array())
        .and_then(|blocks| blocks.iter().find(|b| b["type"] == "tool_use"))
        .map(|b| &b["input"])
}

const GREETING: &str = "Hi! This is mainloop's **demo**: I am a scripted stand-in for the \
model, and GitHub is a fake one running inside mainloop, with one repository, `demo/hello`. \
Nothing leaves your machine.\n\n\
Ask me for a change, say \"add a greeting to demo/hello\", and I will propose a task. Confirm \
it, answer the agent's two questions in the inbox, approve its plan, and watch it open a pull \
request, fix a CI failure and get the pull request ready for review; the demo then merges it \
for you.";

/// Words that make a message a request for a change.
const CHANGE_WORDS: [&str; 22] = [
    "add",
    "build",
    "bump",
    "change",
    "create",
    "delete",
    "document",
    "fix",
    "implement",
    "improve",
    "make",
    "migrate",
    "refactor",
    "remove",
    "rename",
    "rewrite",
    "support",
    "test",
    "translate",
    "update",
    "upgrade",
    "write",
];

/// Whether `text` asks for a change to code.
fn wants_change(text: &str) -> bool {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .any(|word| CHANGE_WORDS.contains(&word))
}

fn chat_reply(request: &RecordedRequest) -> Reply {
    if let Some(result) = request.last_tool_result() {
        if result["is_error"] == true {
            let reason = content_text(result);
            return Reply::text(format!("I could not propose that: {reason}")).with_usage(60, 12);
        }
        let title = last_tool_input(request)
            .and_then(|input| input["title"].as_str())
            .unwrap_or("the change");
        return Reply::text(format!(
            "I proposed \"{title}\" in `{DEMO_REPO}`: press **Confirm** on the card to start \
             it. The agent will write a plan for you to approve first."
        ))
        .with_usage(80, 30);
    }
    // The message being answered is the last text of the last user turn.
    let message = request
        .messages()
        .last()
        .and_then(|m| match &m["content"] {
            Value::String(text) => Some(text.clone()),
            Value::Array(blocks) => blocks
                .iter()
                .rev()
                .find_map(|b| b["text"].as_str().map(str::to_owned)),
            _ => None,
        })
        .unwrap_or_default();
    // Says back what it is given, verbatim: a way to see how the app renders any model text
    // (markdown, code, and hostile HTML that must stay inert).
    if let Some(echo) = strip_prefix_ci(message.trim_start(), "repeat after me:") {
        return Reply::text(echo.trim()).with_usage(60, 40);
    }
    if !wants_change(&message) {
        return Reply::text(GREETING).with_usage(120, 90);
    }
    let title = title_of(&message);
    let mut text = String::from("On it: here is the task.");
    if mentions_other_repo(&message) {
        text = format!("In the demo every task goes to `{DEMO_REPO}`, so I proposed it there.");
    }
    Reply::tool_use(
        "propose_task",
        json!({
            "title": title,
            "description": format!(
                "{}\n\n(Proposed by mainloop's scripted demo model.)",
                message.trim()
            ),
            "repo": DEMO_REPO,
        }),
    )
    .with_text(text)
    .with_usage(150, 60)
}

/// Whether the message names an `owner/name` other than the demo repository.
fn mentions_other_repo(message: &str) -> bool {
    message.split_whitespace().any(|word| {
        let word = word.trim_matches(|c: char| !c.is_alphanumeric());
        let mut parts = word.split('/');
        matches!(
            (parts.next(), parts.next(), parts.next()),
            (Some(owner), Some(name), None) if !owner.is_empty() && !name.is_empty()
        ) && !word.eq_ignore_ascii_case(DEMO_REPO)
    })
}

/// Strips `prefix` from the start of `text`, ignoring ASCII case.
fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.get(..prefix.len())
        .filter(|start| start.eq_ignore_ascii_case(prefix))
        .map(|_| &text[prefix.len()..])
}

/// Strips `suffix` from the end of `text`, ignoring ASCII case.
fn strip_suffix_ci<'a>(text: &'a str, suffix: &str) -> Option<&'a str> {
    let at = text.len().checked_sub(suffix.len())?;
    text.get(at..)
        .filter(|end| end.eq_ignore_ascii_case(suffix))
        .map(|_| &text[..at])
}

/// A short imperative title from a request: "please add a greeting to demo/hello!" becomes
/// "Add a greeting".
fn title_of(message: &str) -> String {
    const PREFIXES: [&str; 12] = [
        "please ",
        "pls ",
        "can you ",
        "could you ",
        "would you ",
        "will you ",
        "i want you to ",
        "i'd like you to ",
        "i would like you to ",
        "hey, ",
        "hi, ",
        "ok, ",
    ];
    const SUFFIXES: [&str; 5] = [
        " please",
        " to demo/hello",
        " in demo/hello",
        " on demo/hello",
        " for demo/hello",
    ];
    let line = message.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let mut text = line.trim();
    loop {
        let before = text;
        text = text.trim_end_matches(['.', '!', '?', ',', ' ']);
        for prefix in PREFIXES {
            if let Some(rest) = strip_prefix_ci(text, prefix) {
                text = rest.trim_start();
            }
        }
        for suffix in SUFFIXES {
            if let Some(rest) = strip_suffix_ci(text, suffix) {
                text = rest.trim_end();
            }
        }
        if text == before {
            break;
        }
    }
    let mut title: String = text.chars().take(72).collect();
    if let Some(first) = title.chars().next() {
        title.replace_range(..first.len_utf8(), &first.to_uppercase().to_string());
    }
    if title.is_empty() {
        "A demo change".to_string()
    } else {
        title
    }
}

/// Which job of a task a Claude Code session runs, told apart by its prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    Plan,
    Implement,
    Fix,
    Feedback,
}

impl Job {
    fn of(prompt: &str) -> Job {
        if prompt.contains("## Failed CI checks") {
            Job::Fix
        } else if prompt.contains("## Review feedback to address") {
            Job::Feedback
        } else if prompt.contains("Implement the approved plan") {
            Job::Implement
        } else {
            Job::Plan
        }
    }
}

/// The task's title, from the prompt's `# Task: …` line.
fn task_title(prompt: &str) -> String {
    prompt
        .lines()
        .find_map(|l| l.strip_prefix("# Task:"))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "A demo change".to_string())
}

/// A quoted block of the prompt (`## heading`, then the text between `---` rules).
fn quoted_section(prompt: &str, heading: &str) -> Option<String> {
    let start = prompt.find(&format!("## {heading}\n"))?;
    let rest = &prompt[start..];
    let body = rest.split_once("\n---\n")?.1;
    let body = body.split_once("\n---")?.0;
    Some(body.trim().to_string()).filter(|b| !b.is_empty())
}

/// The Rust file a task's change goes to: `src/<title as snake_case>.rs`, one per task so
/// that the demo's pull requests never conflict.
fn change_file(title: &str) -> String {
    let mut slug = String::new();
    for c in title.to_lowercase().chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('_') && !slug.is_empty() {
            slug.push('_');
        }
        if slug.len() >= 40 {
            break;
        }
    }
    let slug = slug.trim_end_matches('_');
    if slug.is_empty() || slug.starts_with(|c: char| c.is_ascii_digit()) {
        format!("src/change_{slug}.rs").replace("_.rs", ".rs")
    } else {
        format!("src/{slug}.rs")
    }
}

/// `text` as one single-quoted shell word.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// A `Bash` call that writes `lines` to `file` (`append` or replace).
fn write_lines(file: &str, lines: &[String], append: bool, description: &str) -> Reply {
    let words: Vec<String> = lines.iter().map(|l| shell_quote(l)).collect();
    let redirect = if append { ">>" } else { ">" };
    Reply::tool_use(
        "Bash",
        json!({
            "command": format!(
                "mkdir -p src && printf '%s\\n' {} {redirect} {file}",
                words.join(" ")
            ),
            "description": description,
        }),
    )
}

fn agent_reply(request: &RecordedRequest) -> Reply {
    let prompt = request.first_user_text();
    let job = Job::of(&prompt);
    let title = task_title(&prompt);
    let file = change_file(&title);
    let answered = prompt.contains("Answers to your earlier questions");
    if request.after_tool() {
        let summary = match job {
            Job::Plan if !answered => "I have two questions before I can plan.".to_string(),
            Job::Plan => "The plan is ready for review.".to_string(),
            Job::Implement => format!(
                "Added `{file}` for \"{title}\". This is a scripted demo change: mainloop's demo \
                 model wrote it, not Claude."
            ),
            Job::Fix => {
                format!("CI failed because the change had no test; added a unit test to `{file}`.")
            }
            Job::Feedback => format!("Addressed the review in `{file}`."),
        };
        return Reply::text(summary).with_usage(900, 60);
    }
    match job {
        // The first plan job asks, so that a demo shows the questions too.
        Job::Plan if !answered => Reply::tool_use(
            "AskUserQuestion",
            json!({"questions": [
                {
                    "question": "Where should the change live?",
                    "header": "Placement",
                    "options": [
                        {"label": "A new module", "description": "One file per task (recommended)"},
                        {"label": "src/lib.rs", "description": "Next to the existing code"}
                    ],
                    "multiSelect": false
                },
                {
                    "question": "Which checks should come with it?",
                    "header": "Checks",
                    "options": [
                        {"label": "Unit test"},
                        {"label": "Doc comment"},
                        {"label": "Changelog entry"}
                    ],
                    "multiSelect": true
                }
            ]}),
        )
        .with_usage(1800, 200),
        Job::Plan => {
            let mut plan = format!(
                "## Summary\n\n{title}, as a small self-contained change to `{DEMO_REPO}`. \
                 (This plan comes from mainloop's scripted demo model.)\n\n\
                 ## Files to create\n\n- `{file}`: the change itself.\n\n\
                 ## Files to modify\n\n- None.\n\n\
                 ## Considerations\n\n- Add a unit test next to the change.\n\
                 - The demo's CI fails once on purpose, so that you can watch a fix job.\n"
            );
            let decisions: Vec<String> = prompt
                .lines()
                .filter_map(|line| line.trim().strip_prefix("A: "))
                .map(|answer| format!("- {answer}"))
                .collect();
            if !decisions.is_empty() {
                plan.push_str(&format!("\n## Your answers\n\n{}\n", decisions.join("\n")));
            }
            if let Some(revision) = quoted_section(&prompt, "Changes the user asked for") {
                plan.push_str(&format!("\n## Revised as you asked\n\n{revision}\n"));
            }
            Reply::tool_use("ExitPlanMode", json!({ "plan": plan })).with_usage(2400, 300)
        }
        Job::Implement => {
            let lines = [
                format!("//! {title}"),
                "//!".to_string(),
                "//! A scripted change by mainloop's demo model.".to_string(),
                String::new(),
                "/// What the task asked for.".to_string(),
                format!("pub const TASK: &str = {title:?};"),
            ];
            write_lines(&file, &lines, false, &format!("Create {file}")).with_usage(3100, 240)
        }
        Job::Fix => {
            let lines = [
                String::new(),
                "#[cfg(test)]".to_string(),
                "mod tests {".to_string(),
                "    #[test]".to_string(),
                "    fn names_the_task() {".to_string(),
                "        assert!(!super::TASK.is_empty());".to_string(),
                "    }".to_string(),
                "}".to_string(),
            ];
            write_lines(&file, &lines, true, &format!("Add a test to {file}")).with_usage(2800, 180)
        }
        Job::Feedback => {
            let lines = [String::new(), "// Review feedback addressed.".to_string()];
            write_lines(
                &file,
                &lines,
                true,
                &format!("Address the review in {file}"),
            )
            .with_usage(2600, 120)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(tools: &[&str], messages: Value) -> RecordedRequest {
        let tools: Vec<Value> = tools
            .iter()
            .map(|name| json!({"name": name, "input_schema": {"type": "object"}}))
            .collect();
        RecordedRequest {
            method: "POST".into(),
            path: "/v1/messages".into(),
            query: None,
            headers: Vec::new(),
            body: json!({"model": "m", "max_tokens": 100, "tools": tools, "messages": messages}),
            status: 0,
            error: None,
            received_at: std::time::SystemTime::UNIX_EPOCH,
        }
    }

    fn chat(text: &str) -> RecordedRequest {
        request(
            &["propose_task"],
            json!([{"role": "user", "content": [{"type": "text", "text": text}]}]),
        )
    }

    fn agent(prompt: &str) -> RecordedRequest {
        request(
            &["Bash", "Read", "ExitPlanMode"],
            json!([{"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>context</system-reminder>"},
                {"type": "text", "text": prompt},
            ]}]),
        )
    }

    fn tool(reply: &Reply) -> (String, Value) {
        reply.tool_uses().into_iter().next().unwrap_or_default()
    }

    #[test]
    fn a_greeting_is_answered_with_text_about_the_demo() {
        let reply = demo_model(&chat("Hello! What can you do?"));
        assert!(reply.tool_uses().is_empty());
        assert!(reply.text_content().contains("demo/hello"));
    }

    #[test]
    fn a_change_request_proposes_a_task_for_the_demo_repository() {
        let reply = demo_model(&chat("please add a greeting to demo/hello!"));
        let (name, input) = tool(&reply);
        assert_eq!(name, "propose_task");
        assert_eq!(input["repo"], DEMO_REPO);
        assert_eq!(input["title"], "Add a greeting");
        assert!(
            input["description"]
                .as_str()
                .unwrap_or("")
                .contains("add a greeting")
        );
        // Another repository is not available in the demo: the proposal says where it goes.
        let reply = demo_model(&chat("Could you fix the login bug in acme/web?"));
        assert_eq!(tool(&reply).1["repo"], DEMO_REPO);
        assert_eq!(tool(&reply).1["title"], "Fix the login bug in acme/web");
        assert!(reply.text_content().contains("every task goes to"));
    }

    #[test]
    fn repeat_after_me_says_it_back_verbatim() {
        let reply = demo_model(&chat(
            "Repeat after me: <img src=x onerror=alert(1)> **hi**",
        ));
        assert!(reply.tool_uses().is_empty());
        assert_eq!(reply.text_content(), "<img src=x onerror=alert(1)> **hi**");
    }

    #[test]
    fn after_proposing_it_says_so() {
        let reply = demo_model(&request(
            &["propose_task"],
            json!([
                {"role": "user", "content": "add a greeting"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "propose_task",
                    "input": {"title": "Add a greeting", "description": "d", "repo": DEMO_REPO}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]},
            ]),
        ));
        assert!(reply.tool_uses().is_empty());
        assert!(reply.text_content().contains("\"Add a greeting\""));
    }

    #[test]
    fn a_conversation_summary_is_text() {
        let reply = demo_model(&request(
            &[],
            json!([{"role": "user", "content": "summarise"}]),
        ));
        assert!(reply.tool_uses().is_empty());
        assert!(!reply.text_content().is_empty());
    }

    #[test]
    fn the_agent_plans_then_edits_one_file_per_task() {
        let task = "# Task: Add a greeting\n\nSay hello.\n\nRepository: demo/hello\n\n";
        // First it asks; once answered, it plans with the answers.
        let (name, input) = tool(&demo_model(&agent(&format!(
            "{task}## What to do\n\nYou are in plan mode"
        ))));
        assert_eq!(name, "AskUserQuestion");
        assert_eq!(input["questions"].as_array().map(Vec::len), Some(2));
        let task = format!(
            "{task}## Answers to your earlier questions\n\n- Q: Where?\n  A: A new module\n\n"
        );
        let task = task.as_str();
        let (name, input) = tool(&demo_model(&agent(&format!(
            "{task}## What to do\n\nYou are in plan mode"
        ))));
        assert_eq!(name, "ExitPlanMode");
        assert!(
            input["plan"]
                .as_str()
                .unwrap_or("")
                .contains("- A new module")
        );
        assert!(
            input["plan"]
                .as_str()
                .unwrap_or("")
                .contains("src/add_a_greeting.rs")
        );

        let revised = demo_model(&agent(&format!(
            "{task}## Your previous plan\n\n---\nold\n---\n\n\
             ## Changes the user asked for\n\n---\nUse CSS variables\n---\n\n## What to do\n"
        )));
        assert!(
            tool(&revised).1["plan"]
                .as_str()
                .unwrap_or("")
                .contains("Use CSS variables")
        );

        let implement = demo_model(&agent(&format!(
            "{task}## Approved plan\n\n---\nplan\n---\n\nImplement the approved plan."
        )));
        let (name, input) = tool(&implement);
        assert_eq!(name, "Bash");
        let command = input["command"].as_str().unwrap_or("");
        assert!(command.ends_with("> src/add_a_greeting.rs"), "{command}");

        let fix = demo_model(&agent(&format!(
            "{task}## Failed CI checks\n\n---\nbuild failed\n---\n\n\
             ## The approved plan (for context)\n\n---\nImplement the approved plan\n---\n"
        )));
        let command = tool(&fix).1["command"].as_str().unwrap_or("").to_string();
        assert!(command.contains("#[cfg(test)]") && command.contains(">> src/add_a_greeting.rs"));

        let feedback = demo_model(&agent(&format!(
            "{task}## Review feedback to address\n\n---\nrename it\n---\n"
        )));
        assert!(
            tool(&feedback).1["command"]
                .as_str()
                .unwrap_or("")
                .contains("Review feedback")
        );
    }

    #[test]
    fn after_its_tool_the_agent_ends_with_a_summary() {
        let mut request = agent("# Task: Add a greeting\n\nImplement the approved plan.");
        if let Some(messages) = request.body["messages"].as_array_mut() {
            messages.push(json!({"role": "assistant", "content": [
                {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "true"}}]}));
            messages.push(json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": ""}]}));
        }
        let reply = demo_model(&request);
        assert!(reply.tool_uses().is_empty());
        assert!(reply.text_content().contains("src/add_a_greeting.rs"));
    }

    #[test]
    fn titles_and_files_are_tidy() {
        assert_eq!(
            title_of("Hey, could you please rename foo to bar."),
            "Rename foo to bar"
        );
        assert_eq!(title_of("   "), "A demo change");
        assert_eq!(
            change_file("Add dark mode (v2)!"),
            "src/add_dark_mode_v2.rs"
        );
        assert_eq!(change_file("2 fixes"), "src/change_2_fixes.rs");
        assert_eq!(change_file("???"), "src/change.rs");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
