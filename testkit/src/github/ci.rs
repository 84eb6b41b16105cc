//! Scripted CI: per commit, two GitHub Actions check runs (`test` and `lint`) and a commit
//! status (`ci/build`), created lazily the first time anyone reads that commit's checks or
//! status, judged by the repository's [`CiSetup`](super::model::CiSetup), plus job logs
//! behind a signed download URL like GitHub's.
//!
//! A failing commit fails `test` (with an output naming the failing test and its assertion)
//! and `ci/build`; `lint` always passes.

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use chrono::Duration;
use serde_json::{Value, json};

use super::git;
use super::json::{self, ts};
use super::model::CiScript;
use super::pulls::internal;
use super::rest::{ApiError, Ctx, Reply, error, not_found, ok};
use super::state::{AccountKind, CiRun, Shared, State, UserRec, now};

/// Where job logs are downloaded from (no API token needed; the `sig` query is the key).
pub(crate) const LOG_PREFIX: &str = "/_blobs/actions-logs/";

const FAILED_TEST: &str = "parser::tests::parses_empty_input";
const FAILED_TEST_2: &str = "config::tests::rejects_unknown_keys";
const ASSERTION: &str = "assertion `left == right` failed\n  left: 1\n right: 0";

async fn sha_for(ctx: &Ctx, key: &str, reference: &str) -> Result<String, ApiError> {
    match git::resolve(&ctx.shared, key, reference).await {
        Ok(Some(sha)) => Ok(sha),
        Ok(None) => Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("No commit found for SHA: {reference}"),
        )),
        Err(e) => Err(internal(&e)),
    }
}

/// The commit's CI run, created (and judged) on first use.
fn ensure_run<'s>(st: &'s mut State, key: &str, sha: &str) -> Option<&'s mut CiRun> {
    if !st.repo(key)?.ci_runs.contains_key(sha) {
        let ids = [st.next_id(), st.next_id(), st.next_id(), st.next_id()];
        let repo = st.repo_mut(key)?;
        let fail = match repo.ci.script {
            CiScript::AlwaysPass => false,
            CiScript::NeverPass => true,
            CiScript::FailTimes(n) => {
                let fail = repo.failed_shas < n;
                repo.failed_shas += u32::from(fail);
                fail
            }
        };
        let run = CiRun {
            run_id: ids[0] * 10_000,
            test_job: ids[1] * 10_000,
            lint_job: ids[2] * 10_000,
            status_id: ids[3],
            fail,
            created_at: now(),
            completed_at: None,
            check_reads: 0,
            status_reads: 0,
            log_sig: uuid::Uuid::new_v4().simple().to_string(),
        };
        repo.ci_runs.insert(sha.to_owned(), run);
    }
    st.repo_mut(key)?.ci_runs.get_mut(sha)
}

fn github_actions(base: &str) -> Value {
    let owner = UserRec {
        login: "github".to_owned(),
        id: 9_919,
        kind: AccountKind::Organization,
    };
    json!({
        "id": 15_368,
        "slug": "github-actions",
        "node_id": "MDM6QXBwMTUzNjg=",
        "owner": json::user(base, &owner),
        "name": "GitHub Actions",
        "description": "Automate your workflow from idea to production",
        "external_url": "https://help.github.com/en/actions",
        "html_url": "https://github.com/apps/github-actions",
        "created_at": "2018-07-30T09:30:17Z",
        "updated_at": "2024-04-10T20:33:16Z",
        "permissions": {},
        "events": [],
    })
}

fn check_run(ctx: &Ctx, full: &str, sha: &str, run: &CiRun, name: &str, pending: bool) -> Value {
    let job = if name == "test" {
        run.test_job
    } else {
        run.lint_job
    };
    let failed = name == "test" && run.fail;
    let details = format!(
        "https://github.com/{full}/actions/runs/{}/job/{job}",
        run.run_id
    );
    let api = format!("{}/repos/{full}/check-runs/{job}", ctx.base());
    let (status, conclusion, title, summary, text) = match (pending, failed) {
        (true, _) => ("in_progress", None, None, None, None),
        (false, true) => (
            "completed",
            Some("failure"),
            Some("2 tests failed".to_owned()),
            Some(format!(
                "`{FAILED_TEST}` failed: {}",
                ASSERTION.replace('\n', " ")
            )),
            Some(format!(
                "---- {FAILED_TEST} stdout ----\nthread '{FAILED_TEST}' panicked at src/parser.rs:42:9:\n{ASSERTION}\n\n\
                 ---- {FAILED_TEST_2} stdout ----\nthread '{FAILED_TEST_2}' panicked at src/config.rs:88:5:\n\
                 expected an error for key `colour`, got Ok(Config {{ .. }})\n"
            )),
        ),
        (false, false) => (
            "completed",
            Some("success"),
            Some(format!("{name} passed")),
            Some("All checks passed.".to_owned()),
            None,
        ),
    };
    json!({
        "id": job,
        "name": name,
        "node_id": format!("CR_kwDO{job:010X}"),
        "head_sha": sha,
        "external_id": format!("{:x}", job),
        "url": api,
        "html_url": details,
        "details_url": details,
        "status": status,
        "conclusion": conclusion,
        "started_at": ts(run.created_at),
        "completed_at": if pending { Value::Null } else { json!(ts(run.completed_at.unwrap_or(run.created_at))) },
        "output": {
            "title": title,
            "summary": summary,
            "text": text,
            "annotations_count": u8::from(failed),
            "annotations_url": format!("{api}/annotations"),
        },
        "check_suite": { "id": run.run_id + 1 },
        "app": github_actions(ctx.base()),
        "pull_requests": [],
    })
}

/// Counts one read of `sha`'s CI (check runs or status) and returns the run and whether it
/// still reports pending.
fn read_run(
    ctx: &Ctx,
    key: &str,
    sha: &str,
    status_endpoint: bool,
) -> Result<(CiRun, bool, String), ApiError> {
    ctx.shared.mutate(|st| {
        let repo = st.repo(key).ok_or_else(not_found)?;
        let (polls, full) = (repo.ci.pending_polls, repo.full_name());
        let run = ensure_run(st, key, sha).ok_or_else(not_found)?;
        let reads = if status_endpoint {
            &mut run.status_reads
        } else {
            &mut run.check_reads
        };
        *reads += 1;
        let pending = *reads <= polls;
        let completes = !pending && run.completed_at.is_none();
        if completes {
            run.completed_at = Some(now());
        }
        let run = run.clone();
        // With no pending reads, the verdict was announced when the head moved.
        if completes && polls > 0 {
            st.hook_ci_completed(key, sha, run.fail);
        }
        Ok((run, pending, full))
    })
}

impl State {
    /// CI starts on `sha`, the new head of an open pull request: with no pending reads
    /// scripted, its verdict is known at once, and a webhook receiver hears of it now.
    pub(crate) fn ci_started(&mut self, key: &str, sha: &str) {
        if self.receiver.is_none() || self.repo(key).is_none_or(|r| r.ci.pending_polls > 0) {
            return;
        }
        if let Some(failed) = ensure_run(self, key, sha).map(|run| run.fail) {
            self.hook_ci_completed(key, sha, failed);
        }
    }
}

pub(crate) async fn check_runs(ctx: &Ctx, o: &str, r: &str, reference: &str) -> Reply {
    let (key, _) = ctx.repo(o, r)?;
    let sha = sha_for(ctx, &key, reference).await?;
    let (run, pending, full) = read_run(ctx, &key, &sha, false)?;
    let runs: Vec<Value> = ["test", "lint"]
        .into_iter()
        .filter(|name| ctx.q("check_name").is_none_or(|n| n == *name))
        .map(|name| check_run(ctx, &full, &sha, &run, name, pending))
        .filter(|run| ctx.q("status").is_none_or(|s| run["status"] == s))
        .collect();
    ok(&json!({ "total_count": runs.len(), "check_runs": runs }))
}

pub(crate) async fn status(ctx: &Ctx, o: &str, r: &str, reference: &str) -> Reply {
    let (key, _) = ctx.repo(o, r)?;
    let sha = sha_for(ctx, &key, reference).await?;
    let (run, pending, full) = read_run(ctx, &key, &sha, true)?;
    let (state, description) = match (pending, run.fail) {
        (true, _) => ("pending", "Build in progress"),
        (false, true) => ("failure", "Build failed"),
        (false, false) => ("success", "Build succeeded"),
    };
    let base = ctx.base();
    let updated = if pending {
        run.created_at
    } else {
        run.completed_at.unwrap_or(run.created_at)
    };
    let st = ctx.shared.lock();
    let repo = st.repo(&key).ok_or_else(not_found)?;
    let status = json!({
        "url": format!("{base}/repos/{full}/statuses/{sha}"),
        "avatar_url": "https://avatars.githubusercontent.com/in/15368?v=4",
        "id": run.status_id,
        "node_id": format!("SC_kwDO{:08X}", run.status_id),
        "state": state,
        "description": description,
        "target_url": format!("https://github.com/{full}/actions/runs/{}", run.run_id),
        "context": "ci/build",
        "created_at": ts(run.created_at),
        "updated_at": ts(updated),
    });
    ok(&json!({
        "state": state,
        "statuses": [status],
        "sha": sha,
        "total_count": 1,
        "repository": json::repo(base, &st, repo, None),
        "commit_url": format!("{base}/repos/{full}/commits/{sha}"),
        "url": format!("{base}/repos/{full}/commits/{sha}/status"),
    }))
}

/// Finds a job by id: `(repo full name, sha, run, job name)`.
fn find_job(
    st: &State,
    key: Option<&str>,
    job: u64,
) -> Option<(String, String, CiRun, &'static str)> {
    st.repos
        .iter()
        .filter(|(k, _)| key.is_none_or(|key| key == *k))
        .find_map(|(_, repo)| {
            repo.ci_runs.iter().find_map(|(sha, run)| {
                let name = if run.test_job == job {
                    "test"
                } else if run.lint_job == job {
                    "lint"
                } else {
                    return None;
                };
                Some((repo.full_name(), sha.clone(), run.clone(), name))
            })
        })
}

pub(crate) fn job_logs(ctx: &Ctx, o: &str, r: &str, job: u64) -> Reply {
    let (key, _) = ctx.repo(o, r)?;
    let st = ctx.shared.lock();
    let (_, _, run, _) = find_job(&st, Some(&key), job).ok_or_else(not_found)?;
    let location = format!("{}{LOG_PREFIX}{job}?sig={}", ctx.base(), run.log_sig);
    let mut response = StatusCode::FOUND.into_response();
    let location = HeaderValue::try_from(location).map_err(|e| internal(&e.into()))?;
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

pub(crate) fn serve_log(shared: &Arc<Shared>, rest: &str, query: &str) -> Response {
    let st = shared.lock();
    let found = rest.parse().ok().and_then(|job| find_job(&st, None, job));
    let Some((full, sha, run, name)) = found else {
        return (StatusCode::NOT_FOUND, "BlobNotFound").into_response();
    };
    if !query
        .split('&')
        .any(|pair| pair == format!("sig={}", run.log_sig))
    {
        return (
            StatusCode::FORBIDDEN,
            "AuthenticationFailed: signature mismatch",
        )
            .into_response();
    }
    let text = job_log(&full, &sha, &run, name);
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

/// About 200 lines of a plausible Actions log, ending in the error when the job failed.
fn job_log(full: &str, sha: &str, run: &CiRun, name: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    let failed = name == "test" && run.fail;
    let short = sha.get(..7).unwrap_or(sha);
    lines.extend([
        "##[group]Runner Image".to_owned(),
        "Image: ubuntu-24.04".to_owned(),
        "Version: 20240922.1.0".to_owned(),
        "##[endgroup]".to_owned(),
        "##[group]Run actions/checkout@v4".to_owned(),
        format!("Syncing repository: {full}"),
        format!("HEAD is now at {short}"),
        "##[endgroup]".to_owned(),
    ]);
    let crates = [
        "serde",
        "serde_json",
        "tokio",
        "anyhow",
        "thiserror",
        "regex",
        "bytes",
        "tracing",
    ];
    for (i, krate) in crates.iter().cycle().take(30).enumerate() {
        lines.push(format!(
            "   Compiling {krate}{} v1.0.{i}",
            if i < crates.len() { "" } else { "-impl" }
        ));
    }
    if name == "lint" {
        lines.push("##[group]Run cargo clippy --all-targets -- -D warnings".to_owned());
        for i in 0..150 {
            lines.push(format!("    Checking module_{i:03} (src/module_{i:03}.rs)"));
        }
        lines.push(
            "    Finished `dev` profile [unoptimized + debuginfo] target(s) in 41.20s".to_owned(),
        );
    } else {
        lines.push("##[group]Run cargo test --workspace".to_owned());
        lines.push("running 152 tests".to_owned());
        let modules = ["parser", "config", "runner", "store", "http"];
        for i in 0..150 {
            lines.push(format!(
                "test {}::tests::case_{i:03} ... ok",
                modules[i % modules.len()]
            ));
        }
        if failed {
            lines.push(format!("test {FAILED_TEST_2} ... FAILED"));
            lines.push(format!("test {FAILED_TEST} ... FAILED"));
            lines.push(String::new());
            lines.push("failures:".to_owned());
            let text = format!(
                "\n---- {FAILED_TEST} stdout ----\n\nthread '{FAILED_TEST}' panicked at src/parser.rs:42:9:\n{ASSERTION}\n\
                 note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n\n\
                 ---- {FAILED_TEST_2} stdout ----\n\nthread '{FAILED_TEST_2}' panicked at src/config.rs:88:5:\n\
                 expected an error for key `colour`, got Ok(Config {{ .. }})\n\nfailures:\n    {FAILED_TEST_2}\n    {FAILED_TEST}\n"
            );
            lines.extend(text.lines().map(str::to_owned));
            lines.push("test result: FAILED. 150 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.84s".to_owned());
            lines.push(String::new());
            lines.push("error: test failed, to rerun pass `--lib`".to_owned());
            lines.push("##[error]Process completed with exit code 101.".to_owned());
        } else {
            lines.push("test result: ok. 152 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.84s".to_owned());
        }
    }
    let started = run.created_at;
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let at = started + Duration::milliseconds(i64::try_from(i).unwrap_or(0) * 37);
            format!(
                "{} {line}\n",
                at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            )
        })
        .collect()
}
