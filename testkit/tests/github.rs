//! The fake GitHub over real HTTP and real git: smart-HTTP clone and push with permissions,
//! pull requests that follow pushes, scripted CI and job logs, comments, reactions, reviews,
//! real merges, pagination, authentication, GraphQL, and octocrab's models.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use base64::Engine as _;
use mainloop_testkit::github::{CiScript, FakeGitHub, IssueState, Permission, ReviewState};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tempfile::TempDir;

const WAIT: Duration = Duration::from_secs(20);
const REPO: &str = "acme/widgets";

/// The git CLI with an empty `HOME`, no system config and no prompts.
struct Git {
    home: TempDir,
}

impl Git {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            home: tempfile::tempdir()?,
        })
    }

    /// Runs git in `dir`, sending `token` as Basic auth like mainloop's agent does.
    async fn run(&self, dir: &Path, token: Option<&str>, args: &[&str]) -> anyhow::Result<Output> {
        Ok(self.command(dir, token).args(args).output().await?)
    }

    /// `run` with a 1 MiB post buffer and the HTTP headers traced to stderr.
    async fn traced(&self, dir: &Path, token: &str, args: &[&str]) -> anyhow::Result<Output> {
        let mut cmd = self.command(dir, Some(token));
        cmd.args(["-c", "http.postBuffer=1048576"])
            .env("GIT_TRACE_CURL", "1")
            .env("GIT_TRACE_CURL_NO_DATA", "1");
        Ok(cmd.args(args).output().await?)
    }

    fn command(&self, dir: &Path, token: Option<&str>) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("git");
        cmd.current_dir(dir)
            .args([
                "-c",
                "user.name=Test User",
                "-c",
                "user.email=test@example.com",
            ])
            .args(["-c", "credential.helper=", "-c", "init.defaultBranch=main"])
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE");
        if let Some(token) = token {
            let basic =
                base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"));
            cmd.args([
                "-c",
                &format!("http.extraHeader=Authorization: Basic {basic}"),
            ]);
        }
        cmd
    }

    /// Like `run`, failing unless git succeeds; returns trimmed stdout.
    async fn ok(&self, dir: &Path, token: Option<&str>, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(dir, token, args).await?;
        ensure!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

/// A started fake with `acme/widgets`, a git CLI, and a clone of the repository.
struct Env {
    fake: FakeGitHub,
    git: Git,
    _work: TempDir,
    clone: PathBuf,
    http: reqwest::Client,
}

impl Env {
    async fn new() -> anyhow::Result<Self> {
        let fake = FakeGitHub::start().await?;
        fake.create_repo("acme", "widgets").await?;
        let git = Git::new()?;
        let work = tempfile::tempdir()?;
        let url = fake.git_url(REPO);
        git.ok(
            work.path(),
            Some(&fake.token()),
            &["clone", "--quiet", &url, "repo"],
        )
        .await?;
        let clone = work.path().join("repo");
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("mainloop-testkit-tests")
            .build()?;
        Ok(Self {
            fake,
            git,
            _work: work,
            clone,
            http,
        })
    }

    /// Commits `content` to `path` on `branch` (created from the current HEAD if new) and
    /// pushes it with the bot's token; returns the new SHA.
    async fn push_commit(
        &self,
        branch: &str,
        path: &str,
        content: &str,
        message: &str,
    ) -> anyhow::Result<String> {
        let dir = &self.clone;
        self.git
            .ok(dir, None, &["checkout", "--quiet", "-B", branch])
            .await?;
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(file, content)?;
        self.git.ok(dir, None, &["add", "--all"]).await?;
        self.git
            .ok(dir, None, &["commit", "--quiet", "-m", message])
            .await?;
        self.git
            .ok(
                dir,
                Some(&self.fake.token()),
                &["push", "--quiet", "origin", branch],
            )
            .await?;
        self.git.ok(dir, None, &["rev-parse", "HEAD"]).await
    }

    /// Starts the next branch from `origin/main`.
    async fn checkout_main(&self) -> anyhow::Result<()> {
        let token = self.fake.token();
        self.git
            .ok(&self.clone, Some(&token), &["fetch", "--quiet", "origin"])
            .await?;
        self.git
            .ok(
                &self.clone,
                None,
                &["checkout", "--quiet", "--detach", "origin/main"],
            )
            .await?;
        Ok(())
    }

    /// A REST call with `token` (none when `None`); returns status, headers and JSON body.
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, HeaderMap, Value)> {
        let url = format!("{}{path}", self.fake.base_url());
        let mut req = self.http.request(method.parse()?, url);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await?;
        let (status, headers) = (res.status(), res.headers().clone());
        let text = res.text().await?;
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        };
        Ok((status, headers, value))
    }

    /// A REST call as the bot that must answer `expect`.
    async fn bot(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        expect: u16,
    ) -> anyhow::Result<Value> {
        let (status, _, value) = self
            .call(method, path, Some(&self.fake.token()), body)
            .await?;
        ensure!(
            status.as_u16() == expect,
            "{method} {path}: expected {expect}, got {status}: {value}"
        );
        Ok(value)
    }

    async fn open_pr(&self, branch: &str, body: &str, draft: bool) -> anyhow::Result<Value> {
        let request = json!({ "title": format!("Work on {branch}"), "head": branch, "base": "main", "body": body, "draft": draft });
        self.bot("POST", "/repos/acme/widgets/pulls", Some(request), 201)
            .await
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn git_clone_and_push_follow_tokens_and_permissions() -> anyhow::Result<()> {
    let env = Env::new().await?;
    let (fake, git) = (&env.fake, &env.git);
    ensure!(env.clone.join("README.md").exists() && env.clone.join("src/lib.rs").exists());
    let initial = fake.commits(REPO, "main").await?;
    ensure!(
        initial.len() == 1 && initial[0].1 == "Initial commit",
        "{initial:?}"
    );

    let sha = env
        .push_commit(
            "feature",
            "src/feature.rs",
            "pub fn f() {}\n",
            "Add feature",
        )
        .await?;
    ensure!(fake.branch_head(REPO, "feature").as_deref() == Some(sha.as_str()));
    let commits = fake.commits(REPO, "feature").await?;
    ensure!(
        commits[0] == (sha.clone(), "Add feature".to_owned()),
        "{commits:?}"
    );

    // No token: a 401 with a Basic challenge, which git cannot answer without a prompt.
    let out = git
        .run(&env.clone, None, &["push", "origin", "feature:anonymous"])
        .await?;
    ensure!(!out.status.success(), "an anonymous push went through");
    let bad = git
        .run(
            &env.clone,
            Some("ghp_wrong"),
            &["push", "origin", "feature:bad"],
        )
        .await?;
    ensure!(
        !bad.status.success(),
        "a push with a bad token went through"
    );

    // A read-only user may fetch but not push.
    let reader = fake.add_user("reader");
    let fetched = git
        .run(&env.clone, Some(&reader), &["fetch", "origin"])
        .await?;
    ensure!(
        fetched.status.success(),
        "reader fetch: {}",
        stderr(&fetched)
    );
    let out = git
        .run(
            &env.clone,
            Some(&reader),
            &["push", "origin", "feature:by-reader"],
        )
        .await?;
    ensure!(
        !out.status.success() && stderr(&out).contains("403"),
        "reader push: {}",
        stderr(&out)
    );

    // A write collaborator may push.
    let writer = fake.add_user("writer");
    fake.add_collaborator(REPO, "writer", Permission::Write)?;
    git.ok(
        &env.clone,
        Some(&writer),
        &["push", "--quiet", "origin", "feature:by-writer"],
    )
    .await?;
    ensure!(fake.branch_head(REPO, "by-writer") == Some(sha));
    for branch in ["anonymous", "bad", "by-reader"] {
        ensure!(
            fake.branch_head(REPO, branch).is_none(),
            "{branch} was pushed"
        );
    }

    // A push larger than git's post buffer goes chunked (no Content-Length), and a fetch
    // negotiating from many local-only commits sends gzip-compressed `have` rounds.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..3 * 1024 * 1024)
        .map(|_| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            seed.to_be_bytes()[0]
        })
        .collect();
    std::fs::write(env.clone.join("noise.bin"), &noise)?;
    git.ok(&env.clone, None, &["add", "noise.bin"]).await?;
    git.ok(&env.clone, None, &["commit", "--quiet", "-m", "Noise"])
        .await?;
    let traced = git
        .traced(
            &env.clone,
            &fake.token(),
            &["push", "origin", "feature:big"],
        )
        .await?;
    ensure!(traced.status.success(), "big push: {}", stderr(&traced));
    let trace = stderr(&traced).to_lowercase();
    ensure!(
        trace.contains("transfer-encoding: chunked"),
        "the push was not chunked"
    );
    let big = git.ok(&env.clone, None, &["rev-parse", "HEAD"]).await?;
    ensure!(fake.branch_head(REPO, "big") == Some(big));
    // Someone else pushes a commit this clone has never seen.
    let other = tempfile::tempdir()?;
    let (url, token) = (fake.git_url(REPO), fake.token());
    git.ok(other.path(), Some(&token), &["clone", "--quiet", &url, "o"])
        .await?;
    let other = other.path().join("o");
    std::fs::write(other.join("e.txt"), "e\n")?;
    git.ok(&other, None, &["add", "e.txt"]).await?;
    git.ok(&other, None, &["commit", "--quiet", "-m", "Elsewhere"])
        .await?;
    git.ok(
        &other,
        Some(&token),
        &["push", "--quiet", "origin", "HEAD:elsewhere"],
    )
    .await?;
    git.ok(
        &env.clone,
        None,
        &["checkout", "--quiet", "-B", "local-only", "feature"],
    )
    .await?;
    for i in 0..60 {
        let message = format!("local {i}");
        git.ok(
            &env.clone,
            None,
            &["commit", "--quiet", "--allow-empty", "-m", &message],
        )
        .await?;
    }
    let traced = git
        .traced(
            &env.clone,
            &fake.token(),
            &[
                "fetch",
                "--negotiation-tip=local-only",
                "origin",
                "elsewhere",
            ],
        )
        .await?;
    ensure!(traced.status.success(), "fetch: {}", stderr(&traced));
    let trace = stderr(&traced).to_lowercase();
    ensure!(
        trace.contains("content-encoding: gzip"),
        "the fetch was not gzipped: {:#?}",
        trace
            .lines()
            .filter(|l| l.contains("post") || l.contains("content-"))
            .collect::<Vec<_>>()
    );

    // Cloning needs a token too.
    let elsewhere = tempfile::tempdir()?;
    let url = fake.git_url(REPO);
    let out = git
        .run(elsewhere.path(), None, &["clone", &url, "anon"])
        .await?;
    ensure!(!out.status.success(), "an anonymous clone went through");
    let response = env
        .http
        .get(format!("{url}/info/refs?service=git-upload-pack"))
        .send()
        .await?;
    ensure!(response.status() == StatusCode::UNAUTHORIZED);
    let challenge = response
        .headers()
        .get("www-authenticate")
        .context("no challenge")?;
    ensure!(challenge == "Basic realm=\"GitHub\"");
    Ok(())
}

#[tokio::test]
async fn pull_requests_validate_and_follow_pushes() -> anyhow::Result<()> {
    let env = Env::new().await?;
    let first = env
        .push_commit("feature", "a.txt", "one\n", "First")
        .await?;
    let pr = env.open_pr("feature", "Adds a.txt", true).await?;
    ensure!(
        pr["number"] == 1 && pr["head"]["sha"] == first.as_str() && pr["draft"] == true,
        "{pr}"
    );
    ensure!(pr["head"]["ref"] == "feature" && pr["base"]["ref"] == "main" && pr["state"] == "open");
    ensure!(pr["html_url"] == "https://github.com/acme/widgets/pull/1");
    ensure!(
        pr["node_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("PR_"))
    );

    // 422s: an open PR for the head exists, a branch is missing, nothing to merge, no title.
    let dup = json!({ "title": "Again", "head": "acme:feature", "base": "main" });
    let (status, _, body) = env
        .call(
            "POST",
            "/repos/acme/widgets/pulls",
            Some(&env.fake.token()),
            Some(dup),
        )
        .await?;
    ensure!(status == StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    ensure!(body["message"] == "Validation Failed");
    ensure!(
        body["errors"][0]["message"] == "A pull request already exists for acme:feature.",
        "{body}"
    );
    let missing = json!({ "title": "Nope", "head": "nope", "base": "main" });
    let body = env
        .bot("POST", "/repos/acme/widgets/pulls", Some(missing), 422)
        .await?;
    ensure!(body["errors"][0]["field"] == "head", "{body}");
    let bad_base = json!({ "title": "Nope", "head": "feature", "base": "nope" });
    env.bot("POST", "/repos/acme/widgets/pulls", Some(bad_base), 422)
        .await?;
    env.checkout_main().await?;
    env.git
        .ok(
            &env.clone,
            Some(&env.fake.token()),
            &["push", "--quiet", "origin", "HEAD:refs/heads/same"],
        )
        .await?;
    let same = json!({ "title": "Empty", "head": "same", "base": "main" });
    let body = env
        .bot("POST", "/repos/acme/widgets/pulls", Some(same), 422)
        .await?;
    ensure!(
        body["errors"][0]["message"] == "No commits between main and same",
        "{body}"
    );
    let untitled = json!({ "head": "feature", "base": "main" });
    env.bot("POST", "/repos/acme/widgets/pulls", Some(untitled), 422)
        .await?;

    // head.sha is read live from the branch.
    env.git
        .ok(&env.clone, None, &["checkout", "--quiet", "feature"])
        .await?;
    let second = env
        .push_commit("feature", "a.txt", "two\n", "Second")
        .await?;
    let pr = env
        .bot("GET", "/repos/acme/widgets/pulls/1", None, 200)
        .await?;
    ensure!(
        pr["head"]["sha"] == second.as_str() && pr["mergeable"] == true,
        "{pr}"
    );
    ensure!(env.fake.pull(REPO, 1).and_then(|p| p.head_sha) == Some(second));

    let listed = env
        .bot(
            "GET",
            "/repos/acme/widgets/pulls?head=acme:feature",
            None,
            200,
        )
        .await?;
    ensure!(listed.as_array().map(Vec::len) == Some(1), "{listed}");
    let closed = env
        .bot("GET", "/repos/acme/widgets/pulls?state=closed", None, 200)
        .await?;
    ensure!(closed.as_array().is_some_and(Vec::is_empty));
    let issues = env
        .bot("GET", "/repos/acme/widgets/issues", None, 200)
        .await?;
    ensure!(
        issues[0]["pull_request"]["url"].is_string(),
        "PRs are issues too: {issues}"
    );

    let patched = json!({ "title": "Better title", "state": "closed" });
    let pr = env
        .bot("PATCH", "/repos/acme/widgets/pulls/1", Some(patched), 200)
        .await?;
    ensure!(
        pr["title"] == "Better title" && pr["state"] == "closed" && pr["merged"] == false,
        "{pr}"
    );
    ensure!(
        env.fake
            .pull(REPO, 1)
            .is_some_and(|p| p.state == IssueState::Closed && !p.merged)
    );
    Ok(())
}

/// The check run named `name` in a check-runs answer.
fn run_named<'a>(runs: &'a Value, name: &str) -> anyhow::Result<&'a Value> {
    runs["check_runs"]
        .as_array()
        .and_then(|runs| runs.iter().find(|r| r["name"] == name))
        .with_context(|| format!("no {name} run in {runs}"))
}

#[tokio::test]
async fn ci_scripts_fail_then_pass_with_pending_polls_and_logs() -> anyhow::Result<()> {
    let env = Env::new().await?;
    env.fake
        .set_ci(REPO, CiScript::FailTimes(2).pending_polls(1))?;
    let mut shas = Vec::new();
    for i in 0..3 {
        shas.push(
            env.push_commit("ci", "ci.txt", &format!("{i}\n"), &format!("Attempt {i}"))
                .await?,
        );
    }
    for (i, sha) in shas.iter().enumerate() {
        let path = format!("/repos/acme/widgets/commits/{sha}/check-runs");
        let pending = env.bot("GET", &path, None, 200).await?;
        ensure!(pending["total_count"] == 2, "{pending}");
        ensure!(run_named(&pending, "test")?["status"] == "in_progress");
        ensure!(run_named(&pending, "test")?["conclusion"].is_null());
        let done = env.bot("GET", &path, None, 200).await?;
        let test = run_named(&done, "test")?;
        let expected = if i < 2 { "failure" } else { "success" };
        ensure!(
            test["status"] == "completed" && test["conclusion"] == expected,
            "sha {i}: {test}"
        );
        ensure!(test["head_sha"] == sha.as_str() && test["app"]["slug"] == "github-actions");
        ensure!(run_named(&done, "lint")?["conclusion"] == "success");

        let status_path = format!("/repos/acme/widgets/commits/{sha}/status");
        let status = env.bot("GET", &status_path, None, 200).await?;
        ensure!(status["state"] == "pending" && status["statuses"][0]["context"] == "ci/build");
        let status = env.bot("GET", &status_path, None, 200).await?;
        ensure!(
            status["state"] == expected && status["sha"] == sha.as_str(),
            "{status}"
        );
    }

    // The first SHA stays failed, with an output and a job log that ends in the error.
    let runs = env
        .bot(
            "GET",
            &format!("/repos/acme/widgets/commits/{}/check-runs", shas[0]),
            None,
            200,
        )
        .await?;
    let test = run_named(&runs, "test")?;
    ensure!(test["conclusion"] == "failure" && test["output"]["title"] == "2 tests failed");
    let summary = test["output"]["summary"].as_str().unwrap_or_default();
    ensure!(summary.contains("parser::tests::parses_empty_input") && summary.contains("assertion"));
    let details = test["details_url"].as_str().context("no details_url")?;
    ensure!(
        details.starts_with("https://github.com/acme/widgets/actions/runs/"),
        "{details}"
    );
    let job = details.rsplit('/').next().context("no job id")?;
    let path = format!("/repos/acme/widgets/actions/jobs/{job}/logs");
    let (status, headers, _) = env
        .call("GET", &path, Some(&env.fake.token()), None)
        .await?;
    ensure!(status == StatusCode::FOUND, "{status}");
    let location = headers
        .get("location")
        .context("no Location")?
        .to_str()?
        .to_owned();
    let log = env.http.get(&location).send().await?;
    ensure!(
        log.status() == StatusCode::OK,
        "log download: {}",
        log.status()
    );
    let text = log.text().await?;
    let lines: Vec<&str> = text.lines().collect();
    ensure!((180..=260).contains(&lines.len()), "{} lines", lines.len());
    ensure!(text.contains("panicked at src/parser.rs:42:9"));
    ensure!(
        lines
            .last()
            .is_some_and(|l| l.ends_with("##[error]Process completed with exit code 101."))
    );
    let forged = location.replace("sig=", "sig=x");
    ensure!(env.http.get(&forged).send().await?.status() == StatusCode::FORBIDDEN);

    // Refs other than SHAs resolve; unknown ones are refused like GitHub does.
    let by_branch = env
        .bot(
            "GET",
            "/repos/acme/widgets/commits/heads/ci/check-runs",
            None,
            200,
        )
        .await?;
    ensure!(run_named(&by_branch, "test")?["head_sha"] == shas[2].as_str());
    env.bot(
        "GET",
        "/repos/acme/widgets/commits/deadbeef/check-runs",
        None,
        422,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn comments_reactions_and_reviews() -> anyhow::Result<()> {
    let env = Env::new().await?;
    let fake = &env.fake;
    let alice = fake.add_user("alice");
    let issue = env
        .bot(
            "POST",
            "/repos/acme/widgets/issues",
            Some(json!({ "title": "Plan it", "body": "…" })),
            201,
        )
        .await?;
    ensure!(issue["number"] == 1 && issue["user"]["login"] == "mainloop-bot");
    let plan = env
        .bot(
            "POST",
            "/repos/acme/widgets/issues/1/comments",
            Some(json!({ "body": "## Plan" })),
            201,
        )
        .await?;
    let plan_id = plan["id"].as_u64().context("no comment id")?;
    let reply_id = fake.comment_as("alice", REPO, 1, "lgtm")?;
    let listed = env
        .bot("GET", "/repos/acme/widgets/issues/1/comments", None, 200)
        .await?;
    ensure!(
        listed[0]["id"] == plan_id
            && listed[1]["id"] == reply_id
            && listed[1]["user"]["login"] == "alice"
    );
    let later = env
        .bot(
            "GET",
            "/repos/acme/widgets/issues/1/comments?since=2999-01-01T00:00:00Z",
            None,
            200,
        )
        .await?;
    ensure!(later.as_array().is_some_and(Vec::is_empty), "{later}");
    env.bot(
        "POST",
        "/repos/acme/widgets/issues/1/comments",
        Some(json!({ "body": "" })),
        422,
    )
    .await?;

    // Reactions: new → 201, the same again → 200 with the same reaction, nonsense → 422.
    let path = format!("/repos/acme/widgets/issues/comments/{plan_id}/reactions");
    let eyes = env
        .bot("POST", &path, Some(json!({ "content": "eyes" })), 201)
        .await?;
    let again = env
        .bot("POST", &path, Some(json!({ "content": "eyes" })), 200)
        .await?;
    ensure!(eyes["id"] == again["id"]);
    env.bot("POST", &path, Some(json!({ "content": "thumbs" })), 422)
        .await?;
    fake.react_as("alice", REPO, plan_id, "+1")?;
    let reactions = env.bot("GET", &path, None, 200).await?;
    ensure!(reactions.as_array().map(Vec::len) == Some(2), "{reactions}");
    ensure!(
        fake.reactions(REPO, plan_id)
            .iter()
            .any(|r| r.user == "alice" && r.content == "+1")
    );

    // Only the author or a pusher edits a comment.
    let edit = format!("/repos/acme/widgets/issues/comments/{plan_id}");
    let (status, _, _) = env
        .call(
            "PATCH",
            &edit,
            Some(&alice),
            Some(json!({ "body": "hijack" })),
        )
        .await?;
    ensure!(status == StatusCode::FORBIDDEN, "{status}");
    let own = format!("/repos/acme/widgets/issues/comments/{reply_id}");
    let (status, _, body) = env
        .call(
            "PATCH",
            &own,
            Some(&alice),
            Some(json!({ "body": "lgtm!" })),
        )
        .await?;
    ensure!(
        status == StatusCode::OK && body["body"] == "lgtm!",
        "{status} {body}"
    );
    env.bot("DELETE", &own, None, 204).await?;
    ensure!(fake.comments(REPO, 1).len() == 1);

    // Reviews with inline comments, on the head they saw.
    let head = env
        .push_commit("feature", "src/lib.rs", "pub fn add() {}\n", "Change add")
        .await?;
    env.open_pr("feature", "Closes #1", false).await?;
    let inline = vec![("src/lib.rs", 1, "rename this")];
    let review = fake
        .submit_review(
            "alice",
            REPO,
            2,
            ReviewState::ChangesRequested,
            "Please fix",
            inline,
        )
        .await?;
    ensure!(
        fake.submit_review("mainloop-bot", REPO, 2, ReviewState::Approved, "", vec![])
            .await
            .is_err()
    );
    let reviews = env
        .bot("GET", "/repos/acme/widgets/pulls/2/reviews", None, 200)
        .await?;
    ensure!(reviews[0]["id"] == review && reviews[0]["state"] == "CHANGES_REQUESTED");
    ensure!(reviews[0]["commit_id"] == head.as_str() && reviews[0]["user"]["login"] == "alice");
    let inline = env
        .bot("GET", "/repos/acme/widgets/pulls/2/comments", None, 200)
        .await?;
    ensure!(
        inline[0]["path"] == "src/lib.rs"
            && inline[0]["line"] == 1
            && inline[0]["pull_request_review_id"] == review
    );
    let inline_id = inline[0]["id"].as_u64().context("no inline id")?;
    let path = format!("/repos/acme/widgets/pulls/comments/{inline_id}/reactions");
    env.bot("POST", &path, Some(json!({ "content": "eyes" })), 201)
        .await?;
    ensure!(fake.reactions(REPO, inline_id).len() == 1);

    // Waiting on a state change, without polling.
    let (http, url, token) = (
        env.http.clone(),
        format!("{}/repos/acme/widgets/issues/2/comments", fake.base_url()),
        fake.token(),
    );
    let poster = tokio::spawn(async move {
        http.post(url)
            .bearer_auth(token)
            .json(&json!({ "body": "from a task" }))
            .send()
            .await
    });
    fake.wait_until(WAIT, |v| {
        v.comments(REPO, 2).iter().any(|c| c.body == "from a task")
    })
    .await?;
    ensure!(poster.await??.status() == StatusCode::CREATED);
    Ok(())
}

#[tokio::test]
async fn merge_really_merges_and_closes_referenced_issues() -> anyhow::Result<()> {
    let env = Env::new().await?;
    let fake = &env.fake;
    fake.create_issue_as("mainloop-bot", REPO, "Add a feature", "Please")?;
    env.push_commit("feature", "feature.txt", "feature\n", "Add feature.txt")
        .await?;
    env.open_pr("feature", "Implements it.\n\nCloses #1", false)
        .await?;
    let merge = fake.merge_pr(REPO, 2).await?;
    let main = fake.commits(REPO, "main").await?;
    ensure!(
        main[0]
            == (
                merge.clone(),
                "Merge pull request #2 from acme/feature".to_owned()
            ),
        "{main:?}"
    );
    let pr = env
        .bot("GET", "/repos/acme/widgets/pulls/2", None, 200)
        .await?;
    ensure!(
        pr["merged"] == true && pr["state"] == "closed" && pr["merge_commit_sha"] == merge.as_str(),
        "{pr}"
    );
    ensure!(pr["merged_at"].is_string());
    let issue = env
        .bot("GET", "/repos/acme/widgets/issues/1", None, 200)
        .await?;
    ensure!(
        issue["state"] == "closed" && issue["state_reason"] == "completed",
        "{issue}"
    );
    ensure!(fake.merge_pr(REPO, 2).await.is_err(), "merged twice");
    env.checkout_main().await?;
    ensure!(
        env.clone.join("feature.txt").exists(),
        "the merge is not on main"
    );

    // Conflicting branches: the second cannot merge and says so.
    env.checkout_main().await?;
    env.push_commit("left", "README.md", "left\n", "Left")
        .await?;
    env.checkout_main().await?;
    env.push_commit("right", "README.md", "right\n", "Right")
        .await?;
    env.open_pr("left", "", false).await?;
    env.open_pr("right", "", false).await?;
    fake.merge_pr(REPO, 3).await?;
    let right = env
        .bot("GET", "/repos/acme/widgets/pulls/4", None, 200)
        .await?;
    ensure!(
        right["mergeable"] == false && right["mergeable_state"] == "dirty",
        "{right}"
    );
    ensure!(
        fake.merge_pr(REPO, 4).await.is_err(),
        "a conflicting merge went through"
    );
    fake.close_pr(REPO, 4)?;
    ensure!(
        fake.pull(REPO, 4)
            .is_some_and(|p| p.state == IssueState::Closed && !p.merged)
    );
    Ok(())
}

#[tokio::test]
async fn pagination_auth_and_injected_faults() -> anyhow::Result<()> {
    let env = Env::new().await?;
    for i in 0..35 {
        env.fake
            .create_issue_as("mainloop-bot", REPO, &format!("Issue {i}"), "")?;
    }
    let token = env.fake.token();
    let (status, headers, first) = env
        .call("GET", "/repos/acme/widgets/issues", Some(&token), None)
        .await?;
    ensure!(status == StatusCode::OK && first.as_array().map(Vec::len) == Some(30));
    ensure!(
        first[0]["number"] == 35,
        "newest first: {}",
        first[0]["number"]
    );
    let link = headers.get("link").context("no Link header")?.to_str()?;
    ensure!(
        link.contains("page=2>; rel=\"next\"") && link.contains("rel=\"last\""),
        "{link}"
    );
    ensure!(
        link.starts_with(&format!(
            "<{}/repos/acme/widgets/issues?",
            env.fake.base_url()
        )),
        "{link}"
    );
    let (_, headers, second) = env
        .call(
            "GET",
            "/repos/acme/widgets/issues?page=2",
            Some(&token),
            None,
        )
        .await?;
    ensure!(second.as_array().map(Vec::len) == Some(5));
    let link = headers.get("link").context("no Link header")?.to_str()?;
    ensure!(
        link.contains("rel=\"prev\"") && !link.contains("rel=\"next\""),
        "{link}"
    );
    let (_, headers, _) = env
        .call(
            "GET",
            "/repos/acme/widgets/issues?per_page=10&state=all",
            Some(&token),
            None,
        )
        .await?;
    let link = headers.get("link").context("no Link header")?.to_str()?;
    ensure!(
        link.contains("per_page=10&state=all&page=4>; rel=\"last\""),
        "{link}"
    );

    // Authentication.
    for bad in [None, Some("ghp_nope")] {
        let (status, _, body) = env.call("GET", "/user", bad, None).await?;
        ensure!(
            status == StatusCode::UNAUTHORIZED && body["message"] == "Bad credentials",
            "{status} {body}"
        );
        ensure!(body["documentation_url"] == "https://docs.github.com/rest");
    }
    let me = env.bot("GET", "/user", None, 200).await?;
    ensure!(me["login"] == "mainloop-bot" && me["type"] == "User");
    let body = env.bot("GET", "/repos/acme/nothing", None, 404).await?;
    ensure!(body["message"] == "Not Found");

    // Fault injection: the next matching request fails once.
    env.fake.fail_next("/repos/acme/widgets/issues", 503);
    let body = env
        .bot("GET", "/repos/acme/widgets/issues", None, 503)
        .await?;
    ensure!(body["message"].is_string() && body["documentation_url"].is_string());
    env.bot("GET", "/repos/acme/widgets/issues", None, 200)
        .await?;
    let requests = env.fake.requests();
    let failed = (
        "GET".to_owned(),
        "/repos/acme/widgets/issues".to_owned(),
        503,
    );
    ensure!(requests.contains(&failed), "{requests:?}");
    Ok(())
}

const MARK_READY: &str = "mutation($id: ID!) { markPullRequestReadyForReview(input: {pullRequestId: $id}) { pullRequest { id number isDraft } } }";

#[tokio::test]
async fn graphql_marks_ready_and_reports_errors() -> anyhow::Result<()> {
    let env = Env::new().await?;
    env.push_commit("feature", "x.txt", "x\n", "X").await?;
    let pr = env.open_pr("feature", "", true).await?;
    let node = pr["node_id"].as_str().context("no node_id")?;
    let query = json!({ "query": MARK_READY, "variables": { "id": node } });
    let answer = env.bot("POST", "/graphql", Some(query), 200).await?;
    let marked = &answer["data"]["markPullRequestReadyForReview"]["pullRequest"];
    ensure!(
        marked["isDraft"] == false && marked["number"] == 1 && marked["id"] == node,
        "{answer}"
    );
    ensure!(
        env.bot("GET", "/repos/acme/widgets/pulls/1", None, 200)
            .await?["draft"]
            == false
    );

    let inline = format!(
        "mutation {{ markPullRequestReadyForReview(input: {{pullRequestId: \"{node}\"}}) {{ pullRequest {{ isDraft }} }} }}"
    );
    let answer = env
        .bot("POST", "/graphql", Some(json!({ "query": inline })), 200)
        .await?;
    ensure!(answer["errors"].is_null(), "{answer}");

    let unknown = json!({ "query": MARK_READY, "variables": { "id": "PR_nope" } });
    let answer = env.bot("POST", "/graphql", Some(unknown), 200).await?;
    ensure!(
        answer["data"].is_null() && answer["errors"][0]["type"] == "NOT_FOUND",
        "{answer}"
    );
    let other = env
        .bot(
            "POST",
            "/graphql",
            Some(json!({ "query": "{ viewer { login } }" })),
            200,
        )
        .await?;
    ensure!(other["errors"][0]["type"] == "NOT_FOUND", "{other}");
    let reader = env.fake.add_user("reader");
    let query = json!({ "query": MARK_READY, "variables": { "id": node } });
    let (_, _, answer) = env
        .call("POST", "/graphql", Some(&reader), Some(query))
        .await?;
    ensure!(answer["errors"][0]["type"] == "FORBIDDEN", "{answer}");
    let (status, _, _) = env
        .call(
            "POST",
            "/graphql",
            Some("ghp_nope"),
            Some(json!({ "query": "{}" })),
        )
        .await?;
    ensure!(status == StatusCode::UNAUTHORIZED);

    let calls = env.fake.graphql_calls();
    let oks: Vec<bool> = calls.iter().map(|c| c.ok).collect();
    ensure!(oks == [true, true, false, false, false, false], "{oks:?}");
    ensure!(calls[0].login.as_deref() == Some("mainloop-bot") && calls[0].variables["id"] == node);
    Ok(())
}

#[tokio::test]
async fn issues_labels_and_permissions() -> anyhow::Result<()> {
    let env = Env::new().await?;
    let fake = &env.fake;
    let reader = fake.add_user("reader");
    fake.add_user("writer");
    fake.add_collaborator(REPO, "writer", Permission::Write)?;

    let labelled = json!({ "title": "Bug", "labels": ["bug", "ui"] });
    let (status, _, theirs) = env
        .call(
            "POST",
            "/repos/acme/widgets/issues",
            Some(&reader),
            Some(labelled.clone()),
        )
        .await?;
    ensure!(
        status == StatusCode::CREATED && theirs["labels"].as_array().is_some_and(Vec::is_empty),
        "{theirs}"
    );
    let ours = env
        .bot("POST", "/repos/acme/widgets/issues", Some(labelled), 201)
        .await?;
    ensure!(
        ours["labels"][0]["name"] == "bug" && ours["labels"][1]["name"] == "ui",
        "{ours}"
    );
    let body = env
        .bot(
            "POST",
            "/repos/acme/widgets/issues",
            Some(json!({ "body": "no title" })),
            422,
        )
        .await?;
    ensure!(body["errors"][0]["field"] == "title" && body["errors"][0]["code"] == "missing_field");

    let (status, _, _) = env
        .call(
            "PATCH",
            "/repos/acme/widgets/issues/2",
            Some(&reader),
            Some(json!({ "title": "Mine" })),
        )
        .await?;
    ensure!(status == StatusCode::FORBIDDEN, "{status}");
    let (status, _, own) = env
        .call(
            "PATCH",
            "/repos/acme/widgets/issues/1",
            Some(&reader),
            Some(json!({ "title": "Renamed" })),
        )
        .await?;
    ensure!(
        status == StatusCode::OK && own["title"] == "Renamed",
        "{status} {own}"
    );
    let closed = env
        .bot(
            "PATCH",
            "/repos/acme/widgets/issues/1",
            Some(json!({ "state": "closed" })),
            200,
        )
        .await?;
    ensure!(
        closed["state"] == "closed"
            && closed["state_reason"] == "completed"
            && closed["closed_at"].is_string()
    );
    env.bot(
        "PATCH",
        "/repos/acme/widgets/issues/1",
        Some(json!({ "state": "done" })),
        422,
    )
    .await?;

    let count = |v: &Value| v.as_array().map_or(0, Vec::len);
    ensure!(
        count(
            &env.bot("GET", "/repos/acme/widgets/issues?state=closed", None, 200)
                .await?
        ) == 1
    );
    ensure!(
        count(
            &env.bot("GET", "/repos/acme/widgets/issues?labels=bug", None, 200)
                .await?
        ) == 1
    );
    ensure!(
        count(
            &env.bot(
                "GET",
                "/repos/acme/widgets/issues?state=all&creator=reader",
                None,
                200
            )
            .await?
        ) == 1
    );
    let labels = env
        .bot(
            "POST",
            "/repos/acme/widgets/issues/2/labels",
            Some(json!({ "labels": ["p1"] })),
            200,
        )
        .await?;
    ensure!(count(&labels) == 3, "{labels}");
    let labels = env
        .bot(
            "DELETE",
            "/repos/acme/widgets/issues/2/labels/ui",
            None,
            200,
        )
        .await?;
    ensure!(count(&labels) == 2, "{labels}");
    env.bot(
        "DELETE",
        "/repos/acme/widgets/issues/2/labels/nope",
        None,
        404,
    )
    .await?;
    ensure!(
        fake.issue(REPO, 2)
            .is_some_and(|i| i.labels == ["bug", "p1"])
    );

    for (login, expected, status) in [
        ("mainloop-bot", "admin", 200),
        ("writer", "write", 200),
        ("reader", "read", 200),
        ("ghost-x", "", 404),
    ] {
        let path = format!("/repos/acme/widgets/collaborators/{login}/permission");
        let body = env.bot("GET", &path, None, status).await?;
        ensure!(
            status == 404 || body["permission"] == expected,
            "{login}: {body}"
        );
    }
    let repo = env.bot("GET", "/repos/ACME/Widgets", None, 200).await?;
    ensure!(repo["full_name"] == "acme/widgets" && repo["default_branch"] == "main");
    ensure!(
        repo["clone_url"] == fake.git_url(REPO).as_str() && repo["permissions"]["admin"] == true
    );
    let (_, _, as_reader) = env
        .call("GET", "/repos/acme/widgets", Some(&reader), None)
        .await?;
    ensure!(as_reader["permissions"]["push"] == false && as_reader["permissions"]["pull"] == true);
    Ok(())
}

/// Every answer mainloop's client reads deserializes into octocrab's models.
#[tokio::test]
async fn octocrab_models_accept_the_answers() -> anyhow::Result<()> {
    use octocrab::models::reactions::ReactionContent;
    use octocrab::params::repos::Reference;

    let env = Env::new().await?;
    let fake = &env.fake;
    fake.add_user("alice");
    let octo = octocrab::Octocrab::builder()
        .base_uri(fake.base_url())?
        .personal_token(fake.token())
        .build()?;
    let repo = octo.repos("acme", "widgets").get().await?;
    ensure!(
        repo.permissions.is_some_and(|p| p.push) && repo.default_branch.as_deref() == Some("main")
    );
    let me = octo.current().user().await?;
    ensure!(me.login == "mainloop-bot");

    let issues = octo.issues("acme", "widgets");
    let issue = issues
        .create("Plan")
        .body("Body")
        .labels(vec!["bug".to_owned()])
        .send()
        .await?;
    ensure!(issue.number == 1 && issue.labels[0].name == "bug");
    ensure!(issues.get(1).await?.title == "Plan");
    let comment = issues.create_comment(1, "## Plan").await?;
    fake.comment_as("alice", REPO, 1, "lgtm")?;
    let comments = issues.list_comments(1).send().await?;
    ensure!(comments.items.len() == 2 && comments.items[1].user.login == "alice");
    issues
        .create_comment_reaction(comment.id, ReactionContent::Eyes)
        .await?;
    let reactions = issues.list_comment_reactions(comment.id).send().await?;
    ensure!(reactions.items.len() == 1 && reactions.items[0].content == ReactionContent::Eyes);

    let sha = env.push_commit("feature", "f.txt", "f\n", "F").await?;
    let pulls = octo.pulls("acme", "widgets");
    let pr = pulls
        .create("Feature", "feature", "main")
        .body("Closes #1")
        .draft(true)
        .send()
        .await?;
    ensure!(pr.number == 2 && pr.head.sha == sha && pr.draft == Some(true));
    let got = pulls.get(2).await?;
    ensure!(got.mergeable == Some(true) && got.merged == Some(false));
    ensure!(pulls.list().send().await?.items.len() == 1);
    fake.submit_review(
        "alice",
        REPO,
        2,
        ReviewState::Approved,
        "ok",
        vec![("f.txt", 1, "nice")],
    )
    .await?;
    let reviews = pulls.list_reviews(2).send().await?;
    ensure!(reviews.items[0].state == Some(octocrab::models::pulls::ReviewState::Approved));
    let inline = pulls.list_comments(Some(2)).send().await?;
    ensure!(inline.items[0].path == "f.txt" && inline.items[0].line == Some(1));
    pulls
        .create_comment_reaction(inline.items[0].id, ReactionContent::Eyes)
        .await?;

    let checks = octo
        .checks("acme", "widgets")
        .list_check_runs_for_git_ref(sha.clone().into())
        .send()
        .await?;
    ensure!(checks.total_count == 2 && checks.check_runs.iter().all(|r| r.head_sha == sha));
    let status = octo
        .repos("acme", "widgets")
        .combined_status_for_ref(&Reference::Branch("feature".to_owned()))
        .await?;
    ensure!(status.sha == sha && status.statuses.len() == 1);

    let node = got.node_id.context("no node_id")?;
    let answer: Value = octo
        .graphql(&json!({ "query": MARK_READY, "variables": { "id": node } }))
        .await?;
    ensure!(
        answer["markPullRequestReadyForReview"]["pullRequest"]["isDraft"] == false,
        "{answer}"
    );
    let failed = octo
        .graphql::<Value>(&json!({ "query": MARK_READY, "variables": { "id": "PR_nope" } }))
        .await;
    ensure!(failed.is_err(), "an unknown node resolved");

    for i in 0..12 {
        fake.create_issue_as("alice", REPO, &format!("More {i}"), "")?;
    }
    let page = issues.list().per_page(10u8).send().await?;
    ensure!(page.items.len() == 10 && page.next.is_some());
    let next = octo
        .get_page::<octocrab::models::issues::Issue>(&page.next)
        .await?
        .context("no second page")?;
    ensure!(next.items.len() == 4, "{}", next.items.len());
    Ok(())
}

/// A receiver for webhook deliveries: `(event, delivery id, signature, body)` of each.
async fn webhook_receiver() -> anyhow::Result<(
    String,
    tokio::sync::mpsc::UnboundedReceiver<(String, String, String, Vec<u8>)>,
)> {
    let (sender, received) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let sender = sender.clone();
            async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let delivery = (
                    header("x-github-event"),
                    header("x-github-delivery"),
                    header("x-hub-signature-256"),
                    body.to_vec(),
                );
                // The test may have stopped listening; the delivery is then simply dropped.
                drop(sender.send(delivery));
                StatusCode::ACCEPTED
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, received))
}

#[tokio::test]
async fn webhooks_are_signed_and_follow_what_happens() -> anyhow::Result<()> {
    const SECRET: &str = "hook-secret";
    let env = Env::new().await?;
    let (url, mut received) = webhook_receiver().await?;
    env.fake.deliver_webhooks_to(&url, SECRET);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let mut ids = std::collections::HashSet::new();
    let mut next = async || -> anyhow::Result<(String, Value)> {
        let (event, id, signature, body) = tokio::time::timeout(WAIT, received.recv())
            .await?
            .context("the receiver closed")?;
        let hex = signature.strip_prefix("sha256=").context("sha256=")?;
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<Result<_, _>>()?;
        ring::hmac::verify(&key, &body, &bytes).map_err(|_| anyhow::anyhow!("bad signature"))?;
        ensure!(ids.insert(id), "a delivery id came twice");
        let payload: Value = serde_json::from_slice(&body)?;
        ensure!(payload["repository"]["full_name"] == REPO, "{payload}");
        Ok((event, payload))
    };

    let first = env
        .push_commit("feature", "a.txt", "one\n", "First")
        .await?;
    env.open_pr("feature", "Adds a.txt", true).await?;
    let (event, opened) = next().await?;
    ensure!(
        event == "pull_request" && opened["action"] == "opened",
        "{event} {opened}"
    );
    ensure!(opened["pull_request"]["number"] == 1);
    // CI passes at once here, so its verdict comes with the new head.
    let (event, suite) = next().await?;
    ensure!(
        event == "check_suite" && suite["action"] == "completed",
        "{event} {suite}"
    );
    let check = &suite["check_suite"];
    ensure!(check["head_sha"] == first.as_str() && check["head_branch"] == "feature");
    ensure!(check["conclusion"] == "success" && check["pull_requests"][0]["number"] == 1);

    env.fake.comment_as("mainloop-bot", REPO, 1, "Looks good")?;
    let (event, comment) = next().await?;
    ensure!(
        event == "issue_comment" && comment["action"] == "created",
        "{event}"
    );
    ensure!(comment["issue"]["number"] == 1 && comment["comment"]["body"] == "Looks good");
    ensure!(
        comment["issue"]["pull_request"].is_object(),
        "a PR's comment says so"
    );

    // A push to the PR's branch: a new head, a new verdict (this one fails).
    env.fake.set_ci(REPO, CiScript::NeverPass)?;
    let second = env
        .push_commit("feature", "b.txt", "two\n", "Second")
        .await?;
    let (event, suite) = next().await?;
    ensure!(event == "check_suite", "{event}");
    ensure!(suite["check_suite"]["head_sha"] == second.as_str());
    ensure!(suite["check_suite"]["conclusion"] == "failure");

    env.fake.merge_pr(REPO, 1).await?;
    let (event, merged) = next().await?;
    ensure!(
        event == "pull_request" && merged["action"] == "closed",
        "{event}"
    );
    ensure!(merged["pull_request"]["merged"] == true, "{merged}");

    // What the fake records of each delivery: the receiver's answer.
    env.fake
        .wait_until(WAIT, |v| v.webhook_deliveries().len() == 5)
        .await?;
    let statuses = env.fake.view(|v| {
        v.webhook_deliveries()
            .iter()
            .map(|d| d.status)
            .collect::<Vec<_>>()
    });
    ensure!(statuses == [202; 5], "{statuses:?}");
    Ok(())
}

/// A held request waits for its release, and is carried out even when its client has given
/// up meanwhile: it reached GitHub, only the answer was lost.
#[tokio::test]
async fn a_held_request_is_served_after_its_release_even_with_its_client_gone() -> anyhow::Result<()>
{
    let env = Env::new().await?;
    let issue = env.fake.create_issue_as("mainloop-bot", REPO, "Held", "")?;
    let path = format!("/repos/acme/widgets/issues/{issue}/comments");
    let held = env.fake.hold_next("POST", &path);
    // A read of the same path is not held.
    env.bot("GET", &path, None, 200).await?;
    let comment = json!({ "body": "landed after all" });
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        env.bot("POST", &path, Some(comment), 201),
    );
    let (waited, arrived) = tokio::join!(gave_up, held.arrived(Duration::from_secs(10)));
    arrived?;
    ensure!(waited.is_err(), "the held request was answered: {waited:?}");
    ensure!(env.fake.comments(REPO, issue).is_empty());
    held.release();
    env.fake
        .wait_until(Duration::from_secs(10), |v| {
            v.comments(REPO, issue)
                .iter()
                .any(|c| c.body == "landed after all")
        })
        .await?;
    // The next one is not held.
    env.bot("POST", &path, Some(json!({ "body": "next" })), 201)
        .await?;
    Ok(())
}
