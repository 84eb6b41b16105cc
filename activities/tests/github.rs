//! mainloop's GitHub client against testkit's fake GitHub (REST, GraphQL and real git over
//! HTTP): writes are idempotent under repeats, CI is judged by the rules, failure logs fit
//! their budget and keep the end of the job log, and errors are classified so retries happen
//! only when they can help.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::ensure;

use base64::Engine as _;
use chrono::Utc;
use mainloop_activities::github::{
    CheckKind, CiState, CommentKind, DEFAULT_CONCURRENCY, GitHub, GitHubError, GitHubSettings,
    IssueUpdate, Permission, PullState,
};
use mainloop_testkit::github::{self as fake_github, CiScript, FakeGitHub, ReviewState};
use url::Url;

const REPO: &str = "acme/widgets";

fn client(fake: &FakeGitHub, token: Option<String>) -> anyhow::Result<GitHub> {
    Ok(GitHub::new(GitHubSettings {
        api_url: Url::parse(&fake.base_url())?,
        token,
        concurrency: DEFAULT_CONCURRENCY,
    })?)
}

/// A fake with `acme/widgets` (on which the bot is admin) and a client with the bot's token.
async fn setup() -> anyhow::Result<(FakeGitHub, GitHub)> {
    let fake = FakeGitHub::start().await?;
    fake.create_repo("acme", "widgets").await?;
    let github = client(&fake, Some(fake.token()))?;
    Ok((fake, github))
}

/// A clone of a fake repository, worked with the real `git` CLI as the bot.
struct Checkout {
    dir: tempfile::TempDir,
    header: String,
}

impl Checkout {
    async fn clone(fake: &FakeGitHub, repo: &str) -> anyhow::Result<Self> {
        let credentials = base64::engine::general_purpose::STANDARD
            .encode(format!("x-access-token:{}", fake.token()));
        let checkout = Self {
            dir: tempfile::tempdir()?,
            header: format!("Authorization: Basic {credentials}"),
        };
        let parent = checkout.dir.path().to_path_buf();
        checkout
            .git_in(&parent, &["clone", &fake.git_url(repo), "work"])
            .await?;
        Ok(checkout)
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    async fn git(&self, args: &[&str]) -> anyhow::Result<String> {
        self.git_in(&self.work(), args).await
    }

    async fn git_in(&self, dir: &Path, args: &[&str]) -> anyhow::Result<String> {
        let output = tokio::process::Command::new("git")
            .current_dir(dir)
            // No user or system configuration may change what git does here.
            .env("HOME", self.dir.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .args(["-c", &format!("http.extraHeader={}", self.header)])
            .args([
                "-c",
                "user.name=mainloop",
                "-c",
                "user.email=bot@example.com",
            ])
            .args(args)
            .output()
            .await?;
        ensure!(
            output.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// Commits a change to `branch` (created from the current HEAD if new), pushes it and
    /// returns the commit.
    async fn push_change(&self, branch: &str, file: &str, content: &str) -> anyhow::Result<String> {
        self.git(&["checkout", "-B", branch]).await?;
        tokio::fs::write(self.work().join(file), content).await?;
        self.git(&["add", file]).await?;
        self.git(&["commit", "-m", &format!("change {file}")])
            .await?;
        self.git(&["push", "origin", branch]).await?;
        self.git(&["rev-parse", "HEAD"]).await
    }
}

#[tokio::test]
async fn repo_access_says_who_may_push() {
    let (fake, github) = setup().await.unwrap();
    let access = github.repo_access(REPO).await.unwrap();
    assert_eq!(access.full_name, REPO);
    assert_eq!(access.default_branch, "main");
    assert!(access.can_push);
    assert!(
        access.clone_url.ends_with("/acme/widgets.git"),
        "{}",
        access.clone_url
    );

    let stranger = client(&fake, Some(fake.add_user("stranger"))).unwrap();
    assert!(!stranger.repo_access(REPO).await.unwrap().can_push);

    assert_eq!(
        github.repo_access("acme/nothing").await,
        Err(GitHubError::NotFound)
    );
    assert!(matches!(
        github.repo_access("acme/widgets/extra").await,
        Err(GitHubError::Validation(_))
    ));
}

#[tokio::test]
async fn an_issue_is_found_by_its_marker_instead_of_opened_twice() {
    let (fake, github) = setup().await.unwrap();
    fake.add_user("alice");
    // Someone else's issue quoting the marker is not ours.
    fake.create_issue_as("alice", REPO, "copycat", "<!-- mainloop:task-1 -->")
        .unwrap();
    let labels = vec!["mainloop".to_string(), "planning".to_string()];
    let first = github
        .find_or_create_issue(
            REPO,
            "<!-- mainloop:task-1 -->",
            "Task one",
            "body\n<!-- mainloop:task-1 -->",
            &labels,
            None,
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let again = github
            .find_or_create_issue(
                REPO,
                "<!-- mainloop:task-1 -->",
                "Task one",
                "changed",
                &labels,
                None,
            )
            .await
            .unwrap();
        assert_eq!(again, first);
    }
    let other = github
        .find_or_create_issue(
            REPO,
            "<!-- mainloop:task-2 -->",
            "Task two",
            "<!-- mainloop:task-2 -->",
            &[],
            None,
        )
        .await
        .unwrap();
    assert_ne!(other.number, first.number);

    let issues = fake.issues(REPO);
    let ours: Vec<_> = issues
        .iter()
        .filter(|i| {
            i.author == fake.bot_login() && i.body.as_deref().unwrap_or("").contains("task-1")
        })
        .collect();
    assert_eq!(ours.len(), 1, "{issues:?}");
    assert_eq!(ours[0].number, first.number);
    assert_eq!(ours[0].labels, labels);
    assert!(
        first.url.contains(&format!("/issues/{}", first.number)),
        "{}",
        first.url
    );
}

/// A new task's search for its issue reads one page, not every issue the bot ever opened in
/// the repository: it stops at issues older than the task.
#[tokio::test]
async fn the_issue_search_stops_at_issues_older_than_the_task() {
    let (fake, github) = setup().await.unwrap();
    let bot = fake.bot_login();
    let long_ago = Utc::now() - chrono::Duration::days(30);
    for i in 0..250 {
        let body = format!("<!-- mainloop:old-{i} -->");
        fake.create_issue_as_at(&bot, REPO, "old", &body, long_ago)
            .unwrap();
    }
    let task_created = Utc::now();
    let list_reads = || {
        fake.requests()
            .iter()
            .filter(|(method, path, _)| method == "GET" && path.ends_with("/issues"))
            .count()
    };
    let ensure_new = || {
        github.find_or_create_issue(
            REPO,
            "<!-- mainloop:new -->",
            "New",
            "<!-- mainloop:new -->",
            &[],
            Some(task_created),
        )
    };
    let before = list_reads();
    let issue = ensure_new().await.unwrap();
    assert_eq!(list_reads() - before, 1, "read past the older issues");
    // Found again (a retried activity), still in one page and not opened twice.
    let again = ensure_new().await.unwrap();
    assert_eq!(again, issue);
    assert_eq!(list_reads() - before, 2);
    assert_eq!(fake.issues(REPO).len(), 251);
    // Without a creation time the search still reads every page (100 a page).
    github
        .find_or_create_issue(
            REPO,
            "<!-- mainloop:other -->",
            "o",
            "<!-- mainloop:other -->",
            &[],
            None,
        )
        .await
        .unwrap();
    assert_eq!(list_reads() - before, 5);
}

#[tokio::test]
async fn issues_are_updated_and_closed() {
    let (fake, github) = setup().await.unwrap();
    let issue = github
        .find_or_create_issue(REPO, "<!-- m -->", "Title", "<!-- m -->", &[], None)
        .await
        .unwrap();
    github
        .update_issue(
            REPO,
            issue.number,
            IssueUpdate {
                body: Some("new body <!-- m -->".into()),
                labels: Some(vec!["ready".into()]),
                ..IssueUpdate::default()
            },
        )
        .await
        .unwrap();
    let seen = fake.issue(REPO, issue.number).unwrap();
    assert_eq!(seen.body.as_deref(), Some("new body <!-- m -->"));
    assert_eq!(seen.title, "Title");
    assert_eq!(seen.labels, vec!["ready".to_string()]);

    github.close_issue(REPO, issue.number).await.unwrap();
    github.close_issue(REPO, issue.number).await.unwrap();
    let seen = fake.issue(REPO, issue.number).unwrap();
    assert_eq!(seen.state, fake_github::IssueState::Closed);
    assert!(matches!(
        github
            .update_issue(
                REPO,
                issue.number,
                IssueUpdate {
                    state: Some("merged".into()),
                    ..IssueUpdate::default()
                }
            )
            .await,
        Err(GitHubError::Validation(_))
    ));
}

#[tokio::test]
async fn a_marked_comment_is_written_once_and_updated_in_place() {
    let (fake, github) = setup().await.unwrap();
    let issue = github
        .find_or_create_issue(REPO, "<!-- i -->", "Title", "<!-- i -->", &[], None)
        .await
        .unwrap();
    fake.add_user("alice");
    // A human quoting our marker does not make their comment ours.
    fake.comment_as("alice", REPO, issue.number, "quoting <!-- c:plan -->")
        .unwrap();

    let first = github
        .upsert_comment(
            REPO,
            issue.number,
            "<!-- c:plan -->",
            "plan v1\n<!-- c:plan -->",
        )
        .await
        .unwrap();
    let same = github
        .upsert_comment(
            REPO,
            issue.number,
            "<!-- c:plan -->",
            "plan v1\n<!-- c:plan -->",
        )
        .await
        .unwrap();
    assert_eq!(same, first);
    let edited = github
        .upsert_comment(
            REPO,
            issue.number,
            "<!-- c:plan -->",
            "plan v2\n<!-- c:plan -->",
        )
        .await
        .unwrap();
    assert_eq!((edited.id, edited.created_at), (first.id, first.created_at));
    assert!(
        first.url.contains(&format!("#issuecomment-{}", first.id)),
        "{}",
        first.url
    );

    let comments = fake.comments(REPO, issue.number);
    let ours: Vec<_> = comments
        .iter()
        .filter(|c| c.author == fake.bot_login())
        .collect();
    assert_eq!(ours.len(), 1, "{comments:?}");
    assert_eq!(ours[0].body, "plan v2\n<!-- c:plan -->");
    assert_eq!(comments.len(), 2);
}

#[tokio::test]
async fn comments_are_read_across_pages_oldest_first() {
    let (fake, github) = setup().await.unwrap();
    let issue = github
        .find_or_create_issue(REPO, "<!-- i -->", "Title", "<!-- i -->", &[], None)
        .await
        .unwrap();
    fake.add_user("alice");
    // More than one page of 100, so the `Link` header must be followed (with the token).
    for i in 0..130 {
        fake.comment_as("alice", REPO, issue.number, &format!("comment {i}"))
            .unwrap();
    }
    let comments = github
        .comments_since(REPO, issue.number, None)
        .await
        .unwrap();
    assert_eq!(comments.len(), 130);
    assert_eq!(comments[0].body, "comment 0");
    assert_eq!(comments[129].body, "comment 129");
    assert!(
        comments
            .iter()
            .all(|c| c.author == "alice" && c.path.is_none())
    );
    assert!(
        comments
            .windows(2)
            .all(|w| w[0].created_at <= w[1].created_at)
    );

    let later = Utc::now() + chrono::Duration::hours(1);
    assert!(
        github
            .comments_since(REPO, issue.number, Some(later))
            .await
            .unwrap()
            .is_empty()
    );
    let earlier = Utc::now() - chrono::Duration::hours(1);
    assert_eq!(
        github
            .comments_since(REPO, issue.number, Some(earlier))
            .await
            .unwrap()
            .len(),
        130
    );
}

#[tokio::test]
async fn permissions_follow_the_role() {
    let (fake, github) = setup().await.unwrap();
    fake.add_user("stranger");
    fake.add_user("maintainer");
    fake.add_user("triager");
    fake.add_collaborator(REPO, "maintainer", fake_github::Permission::Maintain)
        .unwrap();
    fake.add_collaborator(REPO, "triager", fake_github::Permission::Triage)
        .unwrap();

    // A public repository: anyone may read, only collaborators with push may decide.
    let stranger = github.permission(REPO, "stranger").await.unwrap();
    assert_eq!(stranger, Permission::Read);
    assert!(!stranger.can_write());
    let maintainer = github.permission(REPO, "maintainer").await.unwrap();
    assert_eq!(maintainer, Permission::Maintain);
    assert!(maintainer.can_write());
    let triager = github.permission(REPO, "triager").await.unwrap();
    assert_eq!(triager, Permission::Triage);
    assert!(!triager.can_write());
    assert_eq!(
        github.permission(REPO, &fake.bot_login()).await.unwrap(),
        Permission::Admin
    );
    assert_eq!(
        github.permission(REPO, "nobody-at-all").await.unwrap(),
        Permission::None
    );
    assert_eq!(
        github.permission(REPO, "dependabot[bot]").await.unwrap(),
        Permission::None
    );
}

#[tokio::test]
async fn errors_say_whether_a_retry_can_help() {
    let (fake, github) = setup().await.unwrap();

    let bad = client(&fake, Some("ghp_not_a_token".into())).unwrap();
    let error = bad.repo_access(REPO).await.unwrap_err();
    assert!(matches!(error, GitHubError::Unauthorized(_)), "{error:?}");
    assert!(!error.is_retryable());
    let anonymous = client(&fake, None).unwrap();
    assert!(matches!(
        anonymous
            .find_or_create_issue(REPO, "<!-- x -->", "t", "<!-- x -->", &[], None)
            .await,
        Err(GitHubError::Unauthorized(_))
    ));

    let issues = format!("/repos/{REPO}/issues");
    for (status, retryable) in [
        (502, true),
        (503, true),
        (500, true),
        (429, true),
        (403, false),
        (422, false),
    ] {
        fake.fail_next(&issues, status);
        let error = github
            .find_or_create_issue(REPO, "<!-- x -->", "t", "<!-- x -->", &[], None)
            .await
            .unwrap_err();
        assert_eq!(error.is_retryable(), retryable, "{status}: {error:?}");
        match status {
            429 => assert_eq!(error, GitHubError::RateLimited { retry_after: None }),
            403 => assert!(matches!(error, GitHubError::Forbidden(_)), "{error:?}"),
            422 => assert!(matches!(error, GitHubError::Validation(_)), "{error:?}"),
            _ => assert!(matches!(error, GitHubError::Transient(_)), "{error:?}"),
        }
    }
    // The retry after the failures opens exactly one issue.
    let issue = github
        .find_or_create_issue(REPO, "<!-- x -->", "t", "<!-- x -->", &[], None)
        .await
        .unwrap();
    assert_eq!(fake.issues(REPO).len(), 1);
    assert_eq!(fake.issues(REPO)[0].number, issue.number);

    fake.fail_next(&issues, 404);
    assert_eq!(
        github
            .find_or_create_issue(REPO, "<!-- x -->", "t", "<!-- x -->", &[], None)
            .await,
        Err(GitHubError::NotFound)
    );

    // Nothing listening: a connection error, worth retrying.
    let addr = fake.addr();
    fake.shutdown().await;
    let gone = GitHub::new(GitHubSettings {
        api_url: Url::parse(&format!("http://{addr}/")).unwrap(),
        token: Some("t".into()),
        concurrency: DEFAULT_CONCURRENCY,
    })
    .unwrap();
    let error = gone.repo_access(REPO).await.unwrap_err();
    assert!(matches!(error, GitHubError::Transient(_)), "{error:?}");
    assert!(error.is_retryable());
}

#[tokio::test]
async fn no_more_requests_are_in_flight_than_the_client_allows() {
    let fake = FakeGitHub::start().await.unwrap();
    fake.create_repo("acme", "widgets").await.unwrap();
    let github = GitHub::new(GitHubSettings {
        api_url: Url::parse(&fake.base_url()).unwrap(),
        token: Some(fake.token()),
        concurrency: 2,
    })
    .unwrap();
    let route = format!("/repos/{REPO}");
    let holds: Vec<_> = (0..5).map(|_| fake.hold_next("GET", &route)).collect();
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let github = github.clone();
            tokio::spawn(async move { github.repo_access(REPO).await })
        })
        .collect();
    let wait = Duration::from_secs(10);
    holds[0].arrived(wait).await.unwrap();
    holds[1].arrived(wait).await.unwrap();
    // Five calls are waiting, two requests are held: a third must not reach GitHub until one
    // of them is answered.
    let third = holds[2].arrived(Duration::from_millis(300)).await;
    assert!(
        third.is_err(),
        "a third request was sent while two were in flight"
    );
    holds[0].release();
    holds[2].arrived(wait).await.unwrap();
    for hold in &holds[1..] {
        hold.release();
    }
    for call in calls {
        let access = call.await.unwrap().unwrap();
        assert_eq!(access.full_name, REPO);
    }
}

#[test]
fn debug_output_never_shows_the_token() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let github = GitHub::new(GitHubSettings {
        api_url: Url::parse("https://api.github.com/").unwrap(),
        token: Some("ghp_very_secret".into()),
        concurrency: DEFAULT_CONCURRENCY,
    })
    .unwrap();
    let text = format!("{github:?}");
    assert!(!text.contains("ghp_very_secret"), "{text}");
    assert!(text.contains("api.github.com"), "{text}");
}

#[tokio::test]
async fn a_pull_request_is_opened_once_then_marked_ready_and_closed() {
    let (fake, github) = setup().await.unwrap();
    let checkout = Checkout::clone(&fake, REPO).await.unwrap();
    let sha = checkout
        .push_change("mainloop/task-1", "notes.md", "hello\n")
        .await
        .unwrap();

    let first = github
        .find_or_create_pull(
            REPO,
            "mainloop/task-1",
            "main",
            "Task one",
            "Closes #1",
            true,
        )
        .await
        .unwrap();
    assert!(first.draft);
    assert_eq!(first.state, PullState::Open);
    assert!(!first.merged);
    assert_eq!(first.head_sha, sha);
    assert_eq!(first.head_ref, "mainloop/task-1");
    for _ in 0..2 {
        let again = github
            .find_or_create_pull(
                REPO,
                "mainloop/task-1",
                "main",
                "Task one",
                "Closes #1",
                true,
            )
            .await
            .unwrap();
        assert_eq!(again.number, first.number);
    }
    assert_eq!(fake.pulls(REPO).len(), 1);

    github.mark_ready_for_review(&first.node_id).await.unwrap();
    // A retried activity marks it again: still fine.
    github.mark_ready_for_review(&first.node_id).await.unwrap();
    let pull = github.pull(REPO, first.number).await.unwrap();
    assert!(!pull.draft);
    assert!(!fake.pull(REPO, first.number).unwrap().draft);

    // A new push moves the head the client reports.
    let newer = checkout
        .push_change("mainloop/task-1", "notes.md", "hello again\n")
        .await
        .unwrap();
    assert_eq!(
        github.pull(REPO, first.number).await.unwrap().head_sha,
        newer
    );

    github.close_pull(REPO, first.number).await.unwrap();
    let closed = github.pull(REPO, first.number).await.unwrap();
    assert_eq!((closed.state, closed.merged), (PullState::Closed, false));
    // A closed PR is still found for its branch, so a late retry does not open another.
    let found = github
        .find_or_create_pull(REPO, "mainloop/task-1", "main", "Task one", "", true)
        .await
        .unwrap();
    assert_eq!(found.number, first.number);
    assert_eq!(fake.pulls(REPO).len(), 1);
}

#[tokio::test]
async fn merged_pull_requests_read_as_merged() {
    let (fake, github) = setup().await.unwrap();
    let checkout = Checkout::clone(&fake, REPO).await.unwrap();
    checkout
        .push_change("feature", "a.txt", "a\n")
        .await
        .unwrap();
    let pull = github
        .find_or_create_pull(REPO, "feature", "main", "Feature", "", false)
        .await
        .unwrap();
    assert!(!pull.draft);
    fake.merge_pr(REPO, pull.number).await.unwrap();
    let merged = github.pull(REPO, pull.number).await.unwrap();
    assert_eq!((merged.state, merged.merged), (PullState::Closed, true));
    // The list endpoint has no `merged` field; `merged_at` says it.
    let listed = github
        .find_or_create_pull(REPO, "feature", "main", "Feature", "", false)
        .await
        .unwrap();
    assert!(listed.merged);
}

#[tokio::test]
async fn graphql_errors_are_errors() {
    let (fake, github) = setup().await.unwrap();
    assert_eq!(
        github.mark_ready_for_review("PR_kwDOdoesnotexist").await,
        Err(GitHubError::NotFound)
    );
    let checkout = Checkout::clone(&fake, REPO).await.unwrap();
    checkout.push_change("draft", "d.txt", "d\n").await.unwrap();
    let pull = github
        .find_or_create_pull(REPO, "draft", "main", "Draft", "", true)
        .await
        .unwrap();
    let stranger = client(&fake, Some(fake.add_user("stranger"))).unwrap();
    let error = stranger
        .mark_ready_for_review(&pull.node_id)
        .await
        .unwrap_err();
    assert!(matches!(error, GitHubError::Forbidden(_)), "{error:?}");
    assert!(fake.pull(REPO, pull.number).unwrap().draft);
    let bad = client(&fake, Some("ghp_wrong".into())).unwrap();
    assert!(matches!(
        bad.mark_ready_for_review(&pull.node_id).await,
        Err(GitHubError::Unauthorized(_))
    ));
}

#[tokio::test]
async fn ci_is_pending_then_judged_per_commit() {
    let (fake, github) = setup().await.unwrap();
    fake.set_ci(REPO, CiScript::FailTimes(1).pending_polls(1))
        .unwrap();
    let checkout = Checkout::clone(&fake, REPO).await.unwrap();
    let broken = checkout
        .push_change("fix", "src/extra.rs", "// 1\n")
        .await
        .unwrap();

    let status = github.ci_status(REPO, &broken).await.unwrap();
    assert_eq!(status.state, CiState::Pending);
    let status = github.ci_status(REPO, &broken).await.unwrap();
    assert_eq!(status.state, CiState::Failure);
    let failed: Vec<&str> = status
        .checks
        .iter()
        .filter(|c| c.is_failure())
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(failed, ["test", "ci/build"]);
    let lint = status.checks.iter().find(|c| c.name == "lint").unwrap();
    assert!(matches!(lint.kind, CheckKind::CheckRun { .. }));
    assert_eq!(lint.conclusion.as_deref(), Some("success"));
    let build = status.checks.iter().find(|c| c.name == "ci/build").unwrap();
    assert_eq!(build.kind, CheckKind::Status);

    // The next commit passes (FailTimes(1)), after its own pending read.
    let fixed = checkout
        .push_change("fix", "src/extra.rs", "// 2\n")
        .await
        .unwrap();
    assert_eq!(
        github.ci_status(REPO, &fixed).await.unwrap().state,
        CiState::Pending
    );
    let status = github.ci_status(REPO, &fixed).await.unwrap();
    assert_eq!(status.state, CiState::Success);
    assert_eq!(status.checks.len(), 3);
    // The old commit keeps its verdict.
    assert_eq!(
        github.ci_status(REPO, &broken).await.unwrap().state,
        CiState::Failure
    );
}

#[tokio::test]
async fn failure_logs_keep_the_end_of_the_job_log_within_budget() {
    let (fake, github) = setup().await.unwrap();
    fake.set_ci(REPO, CiScript::NeverPass).unwrap();
    let checkout = Checkout::clone(&fake, REPO).await.unwrap();
    let sha = checkout
        .push_change("fix", "src/extra.rs", "// broken\n")
        .await
        .unwrap();
    let status = github.ci_status(REPO, &sha).await.unwrap();
    assert_eq!(status.state, CiState::Failure);

    let full = github.failure_logs(REPO, &status, 1_000_000).await.unwrap();
    for wanted in [
        "## Failed: test",
        "## Failed: ci/build",
        "2 tests failed",
        "parser::tests::parses_empty_input",
        "Runner Image",
        "##[error]Process completed with exit code 101.",
    ] {
        assert!(full.contains(wanted), "{wanted} missing from:\n{full}");
    }
    assert!(!full.contains("## Failed: lint"));
    // Actions' per-line timestamps are dropped.
    assert!(!full.contains("Z ##[error]"), "{full}");

    for budget in [3_000, 1_200] {
        let cut = github.failure_logs(REPO, &status, budget).await.unwrap();
        assert!(cut.len() <= budget, "{budget}: {}", cut.len());
        for wanted in [
            "## Failed: test",
            "## Failed: ci/build",
            "exit code 101",
            "… (truncated)",
        ] {
            assert!(
                cut.contains(wanted),
                "{budget}: {wanted} missing from:\n{cut}"
            );
        }
        // The start of the long log gave way to its end.
        assert!(!cut.contains("Runner Image"), "{budget}: {cut}");
    }
    let tiny = github.failure_logs(REPO, &status, 40).await.unwrap();
    assert!(tiny.len() <= 40, "{tiny}");
}

#[tokio::test]
async fn reviews_inline_comments_and_reactions_are_read_and_acknowledged() {
    let (fake, github) = setup().await.unwrap();
    fake.add_user("reviewer");
    fake.add_collaborator(REPO, "reviewer", fake_github::Permission::Write)
        .unwrap();
    let checkout = Checkout::clone(&fake, REPO).await.unwrap();
    checkout
        .push_change("feature", "src/lib.rs", "pub fn add() {}\n")
        .await
        .unwrap();
    let pull = github
        .find_or_create_pull(REPO, "feature", "main", "Feature", "", false)
        .await
        .unwrap();
    fake.submit_review(
        "reviewer",
        REPO,
        pull.number,
        ReviewState::ChangesRequested,
        "Please rename it.",
        vec![("src/lib.rs", 1, "`add` is misleading")],
    )
    .await
    .unwrap();

    let reviews = github.reviews(REPO, pull.number).await.unwrap();
    assert_eq!(reviews.len(), 1);
    assert_eq!(reviews[0].author, "reviewer");
    assert_eq!(reviews[0].state, "CHANGES_REQUESTED");
    assert_eq!(reviews[0].body, "Please rename it.");
    assert!(reviews[0].submitted_at.is_some());

    let inline = github.review_comments(REPO, pull.number).await.unwrap();
    assert_eq!(inline.len(), 1);
    assert_eq!(inline[0].author, "reviewer");
    assert_eq!(inline[0].path.as_deref(), Some("src/lib.rs"));
    assert_eq!(inline[0].line, Some(1));
    // Acknowledging twice leaves one reaction.
    for _ in 0..2 {
        github
            .add_reaction(REPO, CommentKind::Review, inline[0].id, "eyes")
            .await
            .unwrap();
    }
    let reactions = fake.reactions(REPO, inline[0].id);
    assert_eq!(reactions.len(), 1, "{reactions:?}");
    assert_eq!(
        (reactions[0].user.as_str(), reactions[0].content.as_str()),
        (fake.bot_login().as_str(), "eyes")
    );

    // Reactions on a conversation comment: a human's approval, and ours.
    let comment = github
        .upsert_comment(REPO, pull.number, "<!-- plan -->", "The plan <!-- plan -->")
        .await
        .unwrap();
    fake.react_as("reviewer", REPO, comment.id, "+1").unwrap();
    github
        .add_reaction(REPO, CommentKind::Issue, comment.id, "eyes")
        .await
        .unwrap();
    let mut seen: Vec<(String, String)> = github
        .reactions(REPO, comment.id)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.author, r.content))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (fake.bot_login(), "eyes".to_string()),
            ("reviewer".to_string(), "+1".to_string())
        ]
    );
    assert!(matches!(
        github
            .add_reaction(REPO, CommentKind::Issue, comment.id, "thumbs")
            .await,
        Err(GitHubError::Validation(_))
    ));
}

#[tokio::test]
async fn clones_share_one_client() {
    let (fake, github) = setup().await.unwrap();
    let copy = github.clone();
    let bot = fake.bot_login();
    let (a, b) = tokio::join!(github.repo_access(REPO), copy.permission(REPO, &bot));
    assert!(a.unwrap().can_push);
    assert_eq!(b.unwrap(), Permission::Admin);
    // One look-up of the token's user however many calls and clones need it.
    for _ in 0..3 {
        copy.find_or_create_issue(REPO, "<!-- once -->", "t", "<!-- once -->", &[], None)
            .await
            .unwrap();
        github
            .find_or_create_issue(REPO, "<!-- once -->", "t", "<!-- once -->", &[], None)
            .await
            .unwrap();
    }
    let user_lookups = fake
        .requests()
        .iter()
        .filter(|(method, path, _)| method == "GET" && path == "/user")
        .count();
    assert_eq!(user_lookups, 1);
}
