//! The `mainloop-agent` binary end to end, with the real Claude Code CLI pointed at testkit's
//! fake Anthropic API and real git repositories: a bare "remote" on disk per test, cloned over
//! `file://` without a token.
//!
//! The CLI is found through `MAINLOOP_CLAUDE_BIN`, else `claude` on PATH, else the copy
//! `scripts/setup` installs under `.tools/claude-code`; without it these tests fail.
//!
//! The model is `claude-sonnet-4-5`: for newer models (Opus 4.x is remapped to a newer Opus,
//! Sonnet 4.6) CLI 2.1.329 sends request fields the fake does not know yet (a top-level
//! `safeguards`, `system`-role messages carrying `output_config`).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use mainloop_agent::protocol::{
    AgentEvent, AgentResult, AgentSpec, Answer, LogSource, Mode, Outcome,
};
use mainloop_testkit::anthropic::{FakeAnthropic, Reply};
use serde_json::json;
use tempfile::TempDir;

const MODEL: &str = "claude-sonnet-4-5";
/// Far above a run's real duration (about a second): only a hung run hits it.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);
const TITLE: &str = "Add a greeting";
const DESCRIPTION: &str = "Visitors should be greeted with a friendly hello.";
const BRANCH: &str = "mainloop/t1-add-a-greeting";

fn claude_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("MAINLOOP_CLAUDE_BIN").filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "MAINLOOP_CLAUDE_BIN is {} but there is no file there",
            bin.display()
        );
        return bin;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("claude");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    // Where scripts/setup installs it, under the workspace root.
    let installed = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.tools/claude-code/node_modules/.bin/claude");
    if installed.is_file() {
        return installed;
    }
    panic!(
        "the Claude Code CLI is missing: these tests run the real one. Run scripts/setup \
         (it installs @anthropic-ai/claude-code under .tools/claude-code), put `claude` on \
         PATH, or set MAINLOOP_CLAUDE_BIN to its path"
    );
}

/// Runs git and returns its trimmed stdout; panics with stderr on failure.
fn git(dir: &Path, args: &[&str]) -> String {
    let output = std::process::Command::new("git")
        .args(["-c", "user.name=Seed", "-c", "user.email=seed@example.com"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run git: {e}"));
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Creates a directory (`None`) or writes a file.
fn write_or_panic(path: &Path, contents: Option<&str>) {
    let written = match contents {
        None => std::fs::create_dir(path),
        Some(text) => std::fs::write(path, text),
    };
    if let Err(error) = written {
        panic!("cannot write {}: {error}", path.display());
    }
}

/// One test's world: a fake Anthropic API, a bare remote seeded with a commit on `main`, a
/// throwaway HOME and workspace.
struct Fixture {
    fake: FakeAnthropic,
    dir: TempDir,
}

struct Run {
    status: ExitStatus,
    events: Vec<AgentEvent>,
    result: AgentResult,
}

impl Run {
    fn logs(&self, source: LogSource) -> Vec<&str> {
        self.events
            .iter()
            .filter_map(|e| match e {
                AgentEvent::Log { source: s, text } if *s == source => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    fn pushed(&self) -> (&str, &str, bool) {
        match &self.result.outcome {
            Outcome::Pushed {
                branch,
                commit,
                changed,
            } => (branch, commit, *changed),
            other => panic!("expected a push, got {other:?}\nlogs: {:#?}", self.events),
        }
    }

    fn failed(&self) -> (&str, bool) {
        match &self.result.outcome {
            Outcome::Failed { error, retryable } => (error, *retryable),
            other => panic!("expected a failure, got {other:?}"),
        }
    }
}

impl Fixture {
    async fn new() -> Fixture {
        let fake = FakeAnthropic::start()
            .await
            .unwrap_or_else(|e| panic!("cannot start the fake Anthropic API: {e}"));
        // Every test scripts its replies; anything beyond them is visible in the transcript.
        fake.set_default(|_| Reply::text("(unscripted reply)"));
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("no temporary directory: {e}"));
        for sub in ["home", "workspace", "seed"] {
            write_or_panic(&dir.path().join(sub), None);
        }
        git(
            dir.path(),
            &["init", "-q", "--bare", "-b", "main", "origin.git"],
        );
        let seed = dir.path().join("seed");
        git(&seed, &["init", "-q", "-b", "main"]);
        write_or_panic(&seed.join("README.md"), Some("# widgets\n"));
        git(&seed, &["add", "README.md"]);
        git(&seed, &["commit", "-q", "-m", "Initial commit"]);
        git(&seed, &["remote", "add", "origin", "../origin.git"]);
        git(&seed, &["push", "-q", "origin", "main"]);
        Fixture { fake, dir }
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    fn url(&self) -> String {
        format!("file://{}", self.path("origin.git").display())
    }

    /// Where the agent clones the repository (`acme/widgets` → `widgets`).
    fn clone_dir(&self) -> PathBuf {
        self.path("workspace/widgets")
    }

    fn remote(&self, args: &[&str]) -> String {
        git(&self.path("origin.git"), args)
    }

    /// Pushes a commit adding `file` to `branch` on the remote, as an earlier job would have.
    fn push_branch_with(&self, branch: &str, file: &str) -> String {
        let seed = self.path("seed");
        git(&seed, &["checkout", "-q", "-B", branch, "main"]);
        write_or_panic(&seed.join(file), Some("from an earlier attempt\n"));
        git(&seed, &["add", file]);
        git(&seed, &["commit", "-q", "-m", &format!("Add {file}")]);
        git(&seed, &["push", "-q", "origin", branch]);
        git(&seed, &["checkout", "-q", "main"]);
        self.remote(&["rev-parse", branch])
    }

    fn spec(&self, mode: Mode) -> AgentSpec {
        AgentSpec {
            task_id: "t1".into(),
            mode,
            repo: "acme/widgets".into(),
            clone_url: self.url(),
            base_branch: "main".into(),
            branch: (mode != Mode::Plan).then(|| BRANCH.to_owned()),
            title: TITLE.into(),
            description: DESCRIPTION.into(),
            issue_number: Some(12),
            pr_number: (matches!(mode, Mode::Fix | Mode::Feedback)).then_some(34),
            plan: (mode != Mode::Plan).then(|| "1. Add hello.txt with a greeting.".to_owned()),
            answers: Vec::new(),
            revision: None,
            ci_failures: (mode == Mode::Fix)
                .then(|| "test greeting::says_hello FAILED: expected `hello`".to_owned()),
            review_feedback: (mode == Mode::Feedback)
                .then(|| "Please say `hi` instead of `hello`.".to_owned()),
            model: MODEL.into(),
            git_author_name: "mainloop bot".into(),
            git_author_email: "bot@mainloop.test".into(),
        }
    }

    fn command(&self, spec: &AgentSpec) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_mainloop-agent"));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.path("home"))
            .env("ANTHROPIC_BASE_URL", self.fake.base_url())
            .env("ANTHROPIC_API_KEY", self.fake.api_key())
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("DISABLE_AUTOUPDATER", "1")
            // The CLI refuses to bypass permissions as root unless told it is in a sandbox;
            // CI containers run tests as root (the agent's image does not).
            .env("IS_SANDBOX", "1")
            .env("MAINLOOP_CLAUDE_BIN", claude_bin())
            .env("MAINLOOP_AGENT_WORKSPACE", self.path("workspace"))
            .env("MAINLOOP_AGENT_SPEC", serde_json::json!(spec).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    async fn run(&self, spec: &AgentSpec) -> Run {
        let child = self
            .command(spec)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the agent: {e}"));
        match tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output()).await {
            Ok(Ok(output)) => self.parse(output),
            Ok(Err(error)) => panic!("cannot read the agent's output: {error}"),
            Err(_) => panic!("the agent hung for {RUN_TIMEOUT:?}"),
        }
    }

    /// Every stdout line must be an event, exactly one a result, and that one last.
    fn parse(&self, output: std::process::Output) -> Run {
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let events: Vec<AgentEvent> = stdout
            .lines()
            .map(|line| {
                AgentEvent::parse_line(line)
                    .unwrap_or_else(|| panic!("not a protocol line: {line:?}\nstderr: {stderr}"))
            })
            .collect();
        let results: Vec<&AgentResult> = events
            .iter()
            .filter_map(|e| match e {
                AgentEvent::Result(r) => Some(r),
                AgentEvent::Log { .. } => None,
            })
            .collect();
        assert_eq!(results.len(), 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
        let Some(AgentEvent::Result(result)) = events.last().cloned() else {
            panic!("the result is not the last line:\n{stdout}");
        };
        let failed = matches!(result.outcome, Outcome::Failed { .. });
        assert_eq!(
            output.status.success(),
            !failed,
            "exit status {} for {:?}\nstderr: {stderr}",
            output.status,
            result.outcome
        );
        Run {
            status: output.status,
            events,
            result,
        }
    }

    /// The prompt the CLI sent: the last text of the first request's user message.
    fn prompt(&self) -> String {
        let requests = self.fake.requests();
        assert!(!requests.is_empty(), "the CLI sent no request");
        requests[0].last_user_text().unwrap_or_default()
    }

    /// Everything the model was sent, across all requests.
    fn all_text(&self) -> String {
        self.fake
            .requests()
            .iter()
            .map(|r| r.all_text())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn assert_script_used(&self) {
        assert_eq!(
            self.fake.pending_replies(),
            0,
            "the CLI did not ask for every scripted reply"
        );
        for request in self.fake.requests() {
            assert_eq!(
                request.status, 200,
                "{} {} was refused: {:?}",
                request.method, request.path, request.error
            );
            assert_eq!(request.model(), Some(MODEL));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_mode_returns_the_plan_given_to_exit_plan_mode_with_the_usage_summed() {
    let fx = Fixture::new().await;
    let plan = "## Summary\nAdd `hello.txt`.\n\n## Files to create\n- hello.txt";
    fx.fake
        .push(Reply::tool_use("ExitPlanMode", json!({"plan": plan})).with_usage(100, 20));
    fx.fake
        .push(Reply::text("The plan is ready for review.").with_usage(50, 5));
    let mut spec = fx.spec(Mode::Plan);
    spec.answers = vec![Answer {
        question_id: "storage".into(),
        question: "Where should the greeting be stored?".into(),
        answer: "In a plain text file".into(),
    }];
    spec.plan = Some("PREVIOUS PLAN: print the greeting from main.rs".into());
    spec.revision = Some("Keep the greeting out of the code".into());

    let run = fx.run(&spec).await;

    assert_eq!(
        run.result.outcome,
        Outcome::Plan {
            plan: plan.into(),
            questions: Vec::new()
        }
    );
    assert_eq!(run.result.usage.input_tokens, 150);
    assert_eq!(run.result.usage.output_tokens, 25);
    assert!(run.result.usage.cost_usd > 0.0);
    assert_eq!(run.result.summary, "The plan is ready for review.");
    assert!(
        run.logs(LogSource::Claude)
            .contains(&"→ ExitPlanMode: submitting the plan")
    );
    fx.assert_script_used();

    let prompt = fx.prompt();
    for needle in [
        TITLE,
        DESCRIPTION,
        "acme/widgets",
        "Where should the greeting be stored?",
        "In a plain text file",
        "PREVIOUS PLAN: print the greeting from main.rs",
        "Keep the greeting out of the code",
    ] {
        assert!(
            prompt.contains(needle),
            "{needle:?} not in the prompt:\n{prompt}"
        );
    }
    // The CLI ran in the clone (the old agent ran it in the workspace above it), in plan mode.
    let all = fx.all_text();
    let cwd = format!("Primary working directory: {}", fx.clone_dir().display());
    assert!(all.contains(&cwd), "{cwd:?} not sent");
    assert!(all.contains("Is a git repository: true"));
    assert!(all.contains("Plan mode is active"));
    // ExitPlanMode was answered so the model stops.
    assert!(all.contains("Your plan has been submitted for the user's review"));
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_mode_returns_the_questions_asked_with_ids_from_their_headers() {
    let fx = Fixture::new().await;
    fx.fake.push(Reply::tool_use(
        "AskUserQuestion",
        json!({"questions": [
            {"question": "Which language should the greeting be in?", "header": "Language",
             "multiSelect": false, "options": [
                {"label": "English", "description": "hello"},
                {"label": "French", "description": "bonjour"}]},
            {"question": "Where should it be shown?", "header": "Placement",
             "multiSelect": true, "options": [
                {"label": "Home page", "description": "the landing page"},
                {"label": "Footer", "description": "every page"}]},
        ]}),
    ));
    fx.fake.push(Reply::text("I will wait for your answers."));

    let run = fx.run(&fx.spec(Mode::Plan)).await;

    let Outcome::Plan { questions, .. } = &run.result.outcome else {
        panic!("expected a plan, got {:?}", run.result.outcome);
    };
    let ids: Vec<&str> = questions.iter().map(|q| q.id.as_str()).collect();
    assert_eq!(ids, ["language", "placement"]);
    assert_eq!(
        questions[0].question,
        "Which language should the greeting be in?"
    );
    assert_eq!(questions[0].options[1].label, "French");
    assert_eq!(
        questions[0].options[1].description.as_deref(),
        Some("bonjour")
    );
    assert!(!questions[0].multi_select);
    assert!(questions[1].multi_select);
    assert_eq!(
        run.result.summary,
        "2 question(s) to answer before planning"
    );
    // The CLI offers the tool (it does not with plain `-p`), and our answer reached the model.
    assert!(
        fx.fake.requests()[0]
            .tool_names()
            .contains(&"AskUserQuestion".to_owned())
    );
    assert!(fx.all_text().contains("Your questions have been recorded"));
    fx.assert_script_used();
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_mode_may_write_only_the_plan_file_and_that_file_is_the_plan() {
    let fx = Fixture::new().await;
    let plan_file = fx.path("home/.claude/plans/greeting.md");
    let plan = "# Greeting plan\n\n1. Add hello.txt.";
    fx.fake.push(Reply::tool_use(
        "Write",
        json!({"file_path": fx.clone_dir().join("sneaky.txt"), "content": "no"}),
    ));
    fx.fake.push(Reply::tool_use(
        "Write",
        json!({"file_path": plan_file, "content": plan}),
    ));
    fx.fake.push(Reply::tool_use("ExitPlanMode", json!({})));
    fx.fake.push(Reply::text("Done."));

    let run = fx.run(&fx.spec(Mode::Plan)).await;

    assert_eq!(
        run.result.outcome,
        Outcome::Plan {
            plan: plan.into(),
            questions: Vec::new()
        }
    );
    assert_eq!(std::fs::read_to_string(&plan_file).unwrap(), plan);
    assert!(!fx.clone_dir().join("sneaky.txt").exists());
    assert!(fx.all_text().contains("read-only planning session"));
    fx.assert_script_used();
}

#[tokio::test(flavor = "multi_thread")]
async fn implement_commits_what_the_model_wrote_on_a_new_branch_and_pushes_it() {
    let fx = Fixture::new().await;
    let main = fx.remote(&["rev-parse", "main"]);
    fx.fake.push(Reply::tool_use(
        "Write",
        json!({"file_path": fx.clone_dir().join("hello.txt"), "content": "hello\n"}),
    ));
    fx.fake
        .push(Reply::text("Added hello.txt with the greeting."));

    let run = fx.run(&fx.spec(Mode::Implement)).await;

    let (branch, commit, changed) = run.pushed();
    assert_eq!((branch, changed), (BRANCH, true));
    assert_eq!(commit, fx.remote(&["rev-parse", BRANCH]));
    assert_eq!(
        fx.remote(&["show", &format!("{BRANCH}:hello.txt")]),
        "hello"
    );
    assert_eq!(fx.remote(&["rev-parse", &format!("{BRANCH}~1")]), main);
    assert_eq!(
        fx.remote(&["log", "-1", "--format=%B", BRANCH]),
        format!("{TITLE}\n\nAdded hello.txt with the greeting.\n\nRefs #12")
    );
    assert_eq!(
        fx.remote(&["log", "-1", "--format=%an <%ae>", BRANCH]),
        "mainloop bot <bot@mainloop.test>"
    );
    assert_eq!(run.result.summary, "Added hello.txt with the greeting.");
    fx.assert_script_used();

    let prompt = fx.prompt();
    for needle in [
        "1. Add hello.txt with a greeting.",
        BRANCH,
        "Do NOT push",
        "freshly created",
    ] {
        assert!(
            prompt.contains(needle),
            "{needle:?} not in the prompt:\n{prompt}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn implement_continues_a_branch_an_earlier_attempt_pushed() {
    let fx = Fixture::new().await;
    let earlier = fx.push_branch_with(BRANCH, "part1.txt");
    fx.fake.push(Reply::tool_use(
        "Write",
        json!({"file_path": fx.clone_dir().join("part2.txt"), "content": "second half\n"}),
    ));
    fx.fake.push(Reply::text("Finished the second half."));

    let run = fx.run(&fx.spec(Mode::Implement)).await;

    let (_, commit, changed) = run.pushed();
    assert!(changed);
    assert_eq!(commit, fx.remote(&["rev-parse", BRANCH]));
    assert_eq!(fx.remote(&["rev-parse", &format!("{BRANCH}~1")]), earlier);
    let files = fx.remote(&["ls-tree", "--name-only", BRANCH]);
    assert_eq!(
        files.lines().collect::<Vec<_>>(),
        ["README.md", "part1.txt", "part2.txt"]
    );
    assert!(
        fx.prompt()
            .contains("already has 1 commit(s) from an earlier attempt")
    );
    fx.assert_script_used();
}

#[tokio::test(flavor = "multi_thread")]
async fn implement_without_any_change_fails_so_it_is_retried() {
    let fx = Fixture::new().await;
    fx.fake
        .push(Reply::text("I looked around and decided to do nothing."));

    let run = fx.run(&fx.spec(Mode::Implement)).await;

    assert_eq!(run.failed(), ("the model made no change", true));
    assert_eq!(run.status.code(), Some(1));
    assert_eq!(fx.remote(&["branch", "--list", BRANCH]), "");
    fx.assert_script_used();
}

#[tokio::test(flavor = "multi_thread")]
async fn fix_pushes_the_commit_the_model_made_itself_on_the_existing_branch() {
    let fx = Fixture::new().await;
    let earlier = fx.push_branch_with(BRANCH, "hello.txt");
    fx.fake.push(Reply::tool_use(
        "Bash",
        json!({
            "command": "printf 'hello\\n' > hello.txt && git commit -q -am 'Fix the greeting test'",
            "description": "Fix and commit",
        }),
    ));
    fx.fake
        .push(Reply::text("The test expected `hello`; fixed the file."));

    let run = fx.run(&fx.spec(Mode::Fix)).await;

    let (branch, commit, changed) = run.pushed();
    assert_eq!((branch, changed), (BRANCH, true));
    assert_eq!(commit, fx.remote(&["rev-parse", BRANCH]));
    assert_eq!(fx.remote(&["rev-parse", &format!("{BRANCH}~1")]), earlier);
    // The model's own commit, with the identity the agent configured in the clone; nothing
    // was left for the agent to commit.
    assert_eq!(
        fx.remote(&["log", "-1", "--format=%s|%an <%ae>", BRANCH]),
        "Fix the greeting test|mainloop bot <bot@mainloop.test>"
    );
    assert_eq!(
        fx.remote(&["show", &format!("{BRANCH}:hello.txt")]),
        "hello"
    );
    let prompt = fx.prompt();
    assert!(
        prompt.contains("test greeting::says_hello FAILED: expected `hello`"),
        "{prompt}"
    );
    assert!(prompt.contains("Pull request: #34"));
    fx.assert_script_used();
}

#[tokio::test(flavor = "multi_thread")]
async fn feedback_without_a_change_succeeds_unchanged() {
    let fx = Fixture::new().await;
    let earlier = fx.push_branch_with(BRANCH, "hello.txt");
    fx.fake.push(Reply::text(
        "`hello` is what the tests expect, so I kept it.",
    ));

    let run = fx.run(&fx.spec(Mode::Feedback)).await;

    assert_eq!(run.pushed(), (BRANCH, earlier.as_str(), false));
    assert_eq!(fx.remote(&["rev-parse", BRANCH]), earlier);
    assert!(fx.prompt().contains("Please say `hi` instead of `hello`."));
    fx.assert_script_used();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_error_fails_the_step_retryably() {
    let fx = Fixture::new().await;
    fx.fake
        .set_default(|_| Reply::error(400, "invalid_request_error", "the fake says no"));

    let run = fx.run(&fx.spec(Mode::Plan)).await;

    let (error, retryable) = run.failed();
    assert!(error.contains("the fake says no"), "{error}");
    assert!(retryable);
    assert_eq!(run.status.code(), Some(1));
    assert!(!fx.fake.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_repository_fails_for_good_without_calling_the_model() {
    let fx = Fixture::new().await;
    let mut spec = fx.spec(Mode::Implement);
    spec.clone_url = format!("file://{}", fx.path("no-such-repo.git").display());

    let run = fx.run(&spec).await;

    let (error, retryable) = run.failed();
    assert!(error.starts_with("cannot clone acme/widgets"), "{error}");
    assert!(!retryable, "{error}");
    assert!(fx.fake.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_branch_or_an_invalid_spec_fails_for_good() {
    let fx = Fixture::new().await;
    let run = fx.run(&fx.spec(Mode::Fix)).await;
    let (error, retryable) = run.failed();
    assert!(
        error.contains(&format!("`{BRANCH}` does not exist")),
        "{error}"
    );
    assert!(!retryable);

    let mut spec = fx.spec(Mode::Implement);
    spec.plan = None;
    let run = fx.run(&spec).await;
    let (error, retryable) = run.failed();
    assert!(
        error.starts_with("invalid spec:") && error.contains("`plan`"),
        "{error}"
    );
    assert!(!retryable);
    assert!(fx.fake.requests().is_empty());
}

/// Sends the running agent SIGTERM and waits for it to exit.
async fn terminate(child: tokio::process::Child) -> std::process::Output {
    let pid = child.id().expect("the agent already exited").to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("cannot run kill");
    assert!(killed.success());
    tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .expect("the agent ignored SIGTERM")
        .expect("cannot read the agent's output")
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_claude_and_still_reports_a_result() {
    let fx = Fixture::new().await;
    // The model never answers within the test: the agent is stopped while Claude waits.
    fx.fake
        .push(Reply::text("too late").with_first_token_delay(Duration::from_secs(600)));
    let child = fx.command(&fx.spec(Mode::Plan)).spawn().unwrap();
    fx.fake
        .wait_for_requests(1, RUN_TIMEOUT)
        .await
        .expect("Claude never called the API");
    let run = fx.parse(terminate(child).await);

    let (error, retryable) = run.failed();
    assert!(error.contains("stopped by SIGTERM"), "{error}");
    assert!(retryable);
}

/// Whether `pid` still runs (a zombie has ended; only its parent has yet to reap it).
fn running(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, fields)| fields.trim_start().starts_with('Z'))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_also_stops_the_command_claude_is_running() {
    let fx = Fixture::new().await;
    let pid_file = fx.path("command.pid");
    // Claude Code runs each Bash command in a session of its own: killing the CLI alone left
    // this loop running for good.
    fx.fake.push(Reply::tool_use(
        "Bash",
        json!({
            "command": format!(
                "echo $$ > {}; while true; do sleep 0.1; done",
                pid_file.display()
            ),
            "description": "Run until stopped",
        }),
    ));
    let child = fx.command(&fx.spec(Mode::Implement)).spawn().unwrap();
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    let pid = loop {
        if let Ok(pid) = std::fs::read_to_string(&pid_file)
            && !pid.trim().is_empty()
        {
            break pid.trim().to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the command never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let output = terminate(child).await;
    // A signal is delivered when its target is next scheduled: moments, not seconds.
    let gone_by = tokio::time::Instant::now() + Duration::from_secs(10);
    while running(&pid) && tokio::time::Instant::now() < gone_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let still_running = running(&pid);
    if still_running {
        // Not left behind by a failing test either.
        std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .expect("kill");
    }
    assert!(!still_running, "the command Claude ran outlived the agent");
    let run = fx.parse(output);
    let (error, _) = run.failed();
    assert!(error.contains("stopped by SIGTERM"), "{error}");
}
