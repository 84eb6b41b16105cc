//! `mainloop dev --demo`: the demo of `mainloop_testkit::demo` (a scripted model and a fake
//! GitHub with one repository) started in this process, and the settings that point the worker,
//! its jobs and the API at it (its GitHub's webhooks included). The fakes win over whatever
//! else is configured, and what they replace is named in the log, so that no real credential
//! is mixed into a demo.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use mainloop_testkit::demo::{DEMO_API_KEY, DEMO_REPO, DEMO_WORKER_MODEL, Demo, DemoSettings};

use crate::config::{DevArgs, RunnerArg};

/// Starts the demo and rewrites `args` to use it.
///
/// # Errors
/// If a fake cannot start or its URL is not one.
pub async fn start(args: &mut DevArgs) -> Result<Demo> {
    let ignored = ignored_settings(args);
    if !ignored.is_empty() {
        tracing::warn!(
            "demo: ignoring {}; the demo's fakes and a temporary directory stand in for them",
            ignored.join(", ")
        );
    }
    let demo = Demo::start(DemoSettings {
        merge_after: args.demo_merge_after,
        ..DemoSettings::default()
    })
    .await
    .context("starting the demo's fakes")?;
    args.chat.anthropic_api_key = Some(DEMO_API_KEY.to_string());
    args.chat.anthropic_base_url = demo.anthropic().base_url();
    args.github.github_api_url =
        url::Url::parse(&demo.github().base_url()).context("the fake GitHub's URL")?;
    args.github.github_token = Some(demo.github().token());
    args.tasks.claude_code_oauth_token = None;
    args.tasks.worker_model = DEMO_WORKER_MODEL.to_string();
    // The fakes listen on loopback: jobs run here.
    args.tasks.job_runner = RunnerArg::Local;
    args.store.database_url = None;
    args.store.data_dir = Some(demo.state_dir().to_path_buf());
    if let Some(problem) = claude_cli_problem(args.tasks.claude_bin.as_deref()) {
        tracing::warn!(
            "demo: {problem}: tasks will fail when their agent starts; run `make dev DEMO=1`, \
             or set MAINLOOP_CLAUDE_BIN"
        );
    }
    Ok(demo)
}

/// The configured settings the demo replaces, by their environment variables.
fn ignored_settings(args: &DevArgs) -> Vec<&'static str> {
    let set = |value: &Option<String>| value.as_deref().is_some_and(|v| !v.trim().is_empty());
    let mut ignored = Vec::new();
    if set(&args.chat.anthropic_api_key) {
        ignored.push("ANTHROPIC_API_KEY");
    }
    if args.chat.anthropic_base_url.trim_end_matches('/') != "https://api.anthropic.com" {
        ignored.push("ANTHROPIC_BASE_URL");
    }
    if set(&args.tasks.claude_code_oauth_token) {
        ignored.push("CLAUDE_CODE_OAUTH_TOKEN");
    }
    if set(&args.github.github_token) {
        ignored.push("GITHUB_TOKEN");
    }
    if args.github.github_api_url.as_str().trim_end_matches('/') != "https://api.github.com" {
        ignored.push("GITHUB_API_URL");
    }
    if matches!(args.tasks.job_runner, RunnerArg::Kubernetes) {
        ignored.push("MAINLOOP_JOB_RUNNER");
    }
    if set(&args.store.database_url) {
        ignored.push("DATABASE_URL");
    }
    if args.store.data_dir.is_some() {
        ignored.push("MAINLOOP_DATA_DIR");
    }
    if set(&args.api.github_webhook_secret) {
        ignored.push("GITHUB_WEBHOOK_SECRET");
    }
    ignored
}

/// Points the demo's GitHub at the API's webhook endpoint, once the API listens. It tells
/// tasks what happened as a GitHub configured per docs/operations.md does: a CI verdict or the
/// demo user's merge is seen at once, not at the next poll (15 s and 30 s at the defaults).
pub fn deliver_webhooks(demo: &Demo, api: std::net::SocketAddr) {
    demo.deliver_webhooks_to(&format!("http://{api}/api/github/webhook"));
}

/// Environment for the demo's jobs, set over the configured one. Claude Code refuses to skip
/// its permission prompts as root unless `IS_SANDBOX` is `1`; in the demo the model only runs
/// its scripted edits in the job's clone, so the jobs always say so, whatever the operator set.
pub fn job_env() -> Vec<(String, String)> {
    vec![("IS_SANDBOX".to_string(), "1".to_string())]
}

/// The lines that tell the user this is a demo, printed before the URLs.
pub fn banner(demo: &Demo) -> Vec<String> {
    let github = demo.github().base_url();
    vec![
        "demo  a scripted model and a fake GitHub stand in for Anthropic and GitHub: no \
         accounts, nothing leaves this machine"
            .to_string(),
        format!(
            "demo-github  {github}  repository {DEMO_REPO}; its issues and pull requests: curl -H \
             'Authorization: Bearer {}' '{github}/repos/{DEMO_REPO}/issues?state=all'",
            demo.user_token()
        ),
        format!(
            "demo-state  {} (removed at exit)",
            demo.state_dir().display()
        ),
    ]
}

/// Why the Claude Code CLI the jobs would run cannot be found, if it cannot.
fn claude_cli_problem(configured: Option<&Path>) -> Option<String> {
    match configured {
        Some(path) if path.is_file() => None,
        Some(path) => Some(format!(
            "MAINLOOP_CLAUDE_BIN {} does not exist",
            path.display()
        )),
        None => {
            let on_path = std::env::var_os("PATH").is_some_and(|paths| {
                std::env::split_paths(&paths).any(|dir: PathBuf| dir.join("claude").is_file())
            });
            (!on_path).then(|| "the Claude Code CLI (`claude`) is not on PATH".to_string())
        }
    }
}
