//! mainloop's GitHub client: everything the worker task does on GitHub (repository access,
//! the task's issue and its comments, the draft PR, CI status and failure logs, reviews,
//! reactions, collaborator permissions, and the GraphQL mark-ready mutation), on `octocrab`.
//!
//! It owns four things the activities rely on:
//! * **Idempotent writes.** Issues are found by a marker in their body and PRs by their head
//!   branch before anything is created; comments carry a marker and are updated in place. An
//!   activity that runs twice has the effect of one run.
//! * **Error classification.** Every failure becomes a [`GitHubError`] that says whether trying
//!   again can help ([`GitHubError::is_retryable`]); rate limits carry GitHub's requested delay.
//!   octocrab's own retry layer is switched off: Temporal owns retries, and a blind retry of a
//!   `POST` that reached GitHub would open a second issue or comment.
//! * **Few requests at once.** At most `concurrency` requests are in flight per process
//!   ([`DEFAULT_CONCURRENCY`]); the rest wait their turn, as GitHub's secondary rate limits
//!   ask.
//! * **CI's verdict.** Check runs and commit statuses are combined by one set of rules
//!   ([`CiStatus`]), and failed checks' logs are gathered within a byte budget.
//!
//! Responses are read into small local types rather than octocrab's models: GitHub (and GitHub
//! Enterprise, and the test fake) leave out or null fields that octocrab's models require, and a
//! missing field we do not use must not fail a task.
//!
//! The client must be built inside a Tokio runtime and used within it: octocrab runs its HTTP
//! stack behind a `tower` buffer whose worker is a task on the runtime that built it.

use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use octocrab::service::middleware::retry::RetryConfig;
use octocrab::{Octocrab, Page};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::{OnceCell, Semaphore, SemaphorePermit};
use url::Url;

/// GitHub.com's REST API. GitHub Enterprise Server's is `https://{host}/api/v3/`.
pub const DEFAULT_API_URL: &str = "https://api.github.com/";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(60);
const PER_PAGE: &str = "100";
/// A bound on pagination, so a server that keeps linking to a next page cannot hold an
/// activity forever (100 pages of 100 is far more than one task produces).
const MAX_PAGES: usize = 100;
const TRUNCATED: &str = "… (truncated)";

/// Most requests one process has in flight at once. GitHub answers more than 100 concurrent
/// requests (REST and GraphQL together, per account) with a secondary rate limit and asks
/// integrations to send requests serially; without a bound, each of the worker's activity
/// slots could hold one, and every worker process adds its own. A request takes GitHub tens
/// to hundreds of milliseconds, so eight at once allow far more requests than the primary
/// rate limit does (5,000 an hour).
pub const DEFAULT_CONCURRENCY: usize = 8;

/// Where GitHub is and how to authenticate. `Debug` does not print the token.
#[derive(Clone)]
pub struct GitHubSettings {
    /// The REST API's base URL, e.g. [`DEFAULT_API_URL`].
    pub api_url: Url,
    /// A personal access token (or any token sent as `Authorization: Bearer`).
    pub token: Option<String>,
    /// Most requests in flight at once from this process (at least 1); see
    /// [`DEFAULT_CONCURRENCY`].
    pub concurrency: usize,
}

impl fmt::Debug for GitHubSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitHubSettings")
            .field("api_url", &self.api_url.as_str())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

/// Why a GitHub call failed, sorted by what the caller can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitHubError {
    /// The resource does not exist or the token cannot see it (GitHub answers 404 for both).
    #[error("not found")]
    NotFound,
    /// The token is missing, wrong, expired or revoked.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The token is valid but may not do this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// GitHub rejected the request itself (422, 400, 409, 410) or our input was malformed.
    #[error("rejected: {0}")]
    Validation(String),
    /// A primary or secondary rate limit; `retry_after` is GitHub's requested wait if it gave one.
    #[error("rate limited{}", retry_after.map(|d| format!(" (retry after {}s)", d.as_secs())).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },
    /// A server error, timeout or connection failure: the same request may succeed later.
    #[error("temporarily unavailable: {0}")]
    Transient(String),
    /// Anything else (an unexpected response, a bug): retrying will not help.
    #[error("{0}")]
    Other(String),
}

impl GitHubError {
    /// Whether the same request may succeed if it is simply sent again later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::RateLimited { .. } | Self::Transient(_))
    }
}

impl From<octocrab::Error> for GitHubError {
    fn from(error: octocrab::Error) -> Self {
        match error {
            octocrab::Error::GitHub { source, .. } => from_response(&source),
            // The transport: connection refused or reset, TLS, timeouts. octocrab reports
            // failures below HTTP as service or hyper errors.
            octocrab::Error::Service { source, .. } => {
                Self::Transient(error_chain(source.as_ref()))
            }
            octocrab::Error::Hyper { source, .. } => Self::Transient(error_chain(&source)),
            octocrab::Error::Json { source, .. } => Self::Other(format!(
                "unexpected response from GitHub at `{}`: {}",
                source.path(),
                source.inner()
            )),
            octocrab::Error::Serde { source, .. } => {
                Self::Other(format!("unexpected response from GitHub: {source}"))
            }
            other => Self::Other(error_chain(&other)),
        }
    }
}

/// Sorts an HTTP error answer from GitHub by its status code and rate-limit headers.
fn from_response(error: &octocrab::GitHubError) -> GitHubError {
    let status = error.status_code.as_u16();
    let message = error_message(error);
    match status {
        401 => GitHubError::Unauthorized(message),
        403 | 429 => {
            if let Some(retry_after) = rate_limit_delay(error) {
                GitHubError::RateLimited { retry_after }
            } else if status == 429 || message.to_lowercase().contains("rate limit") {
                // Secondary rate limits sometimes come as a bare 403 whose message is the only
                // sign; waiting is the cure, not a different token.
                GitHubError::RateLimited { retry_after: None }
            } else {
                GitHubError::Forbidden(message)
            }
        }
        404 => GitHubError::NotFound,
        400 | 409 | 410 | 422 => GitHubError::Validation(message),
        408 | 500..=599 => GitHubError::Transient(format!("HTTP {status}: {message}")),
        _ => GitHubError::Other(format!("HTTP {status}: {message}")),
    }
}

/// `Some(delay)` when the headers say this is a rate limit: `retry-after` (seconds or an HTTP
/// date), or an exhausted primary limit (`x-ratelimit-remaining: 0`) whose reset time gives
/// the delay.
fn rate_limit_delay(error: &octocrab::GitHubError) -> Option<Option<Duration>> {
    let header = |name: &str| {
        error
            .headers
            .as_ref()
            .and_then(|headers| headers.get(name))
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
    };
    if let Some(value) = header("retry-after") {
        if let Ok(seconds) = value.parse::<u64>() {
            return Some(Some(Duration::from_secs(seconds)));
        }
        let at = DateTime::parse_from_rfc2822(value).ok()?;
        return Some(Some(until(at.with_timezone(&Utc))));
    }
    if header("x-ratelimit-remaining") == Some("0") {
        let reset = error.rate_limit_reset_at();
        return Some(reset.map(until));
    }
    None
}

/// The wait until `at`, at least a second so a retry never hammers a limit that is resetting.
fn until(at: DateTime<Utc>) -> Duration {
    let seconds = (at - Utc::now()).num_seconds().max(1);
    Duration::from_secs(u64::try_from(seconds).unwrap_or(1))
}

/// GitHub's message plus its field errors (`{"resource":"Issue","code":"missing_field",…}`),
/// which carry the useful part of a 422.
fn error_message(error: &octocrab::GitHubError) -> String {
    let mut message = error.message.clone();
    for detail in error.errors.iter().flatten() {
        let text = match detail {
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Object(fields) => {
                match fields.get("message").and_then(|m| m.as_str()) {
                    Some(text) => text.to_string(),
                    None => detail.to_string(),
                }
            }
            other => other.to_string(),
        };
        message.push_str("; ");
        message.push_str(&text);
    }
    message
}

/// An error and its causes on one line: octocrab's outer errors say little on their own
/// ("service error"), the cause says what happened ("connection refused").
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// What the token may do with a repository, and how to clone it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoAccess {
    pub full_name: String,
    pub default_branch: String,
    pub clone_url: String,
    pub html_url: String,
    /// Whether the token may push (write, maintain or admin).
    pub can_push: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueRef {
    pub number: u64,
    pub url: String,
}

/// A partial update of an issue: `None` leaves the field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssueUpdate {
    pub title: Option<String>,
    pub body: Option<String>,
    /// `"open"` or `"closed"`.
    pub state: Option<String>,
    /// Replaces all labels.
    pub labels: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommentRef {
    pub id: u64,
    pub url: String,
    pub created_at: DateTime<Utc>,
}

/// An issue or PR comment, or an inline review comment (which has a path and usually a line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment {
    pub id: u64,
    pub author: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub path: Option<String>,
    pub line: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    pub id: u64,
    pub author: String,
    /// `APPROVED`, `CHANGES_REQUESTED`, `COMMENTED`, `DISMISSED` or `PENDING`.
    pub state: String,
    pub body: String,
    /// `None` for a review that is still pending.
    pub submitted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    pub author: String,
    /// `+1`, `-1`, `laugh`, `confused`, `heart`, `hooray`, `rocket` or `eyes`.
    pub content: String,
}

/// Which comment API a comment id belongs to: the two have separate id spaces and endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommentKind {
    /// A comment on an issue or on a PR's conversation.
    Issue,
    /// An inline comment in a PR review.
    Review,
}

/// A user's role on a repository, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Admin,
    Maintain,
    Write,
    Triage,
    Read,
    None,
}

impl Permission {
    /// Whether the user may push, and so may decide for the task (approve, answer, revise).
    pub fn can_write(&self) -> bool {
        matches!(self, Self::Admin | Self::Maintain | Self::Write)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullState {
    Open,
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pull {
    pub number: u64,
    /// The PR's web page.
    pub url: String,
    /// The GraphQL id, for mutations.
    pub node_id: String,
    pub head_sha: String,
    pub head_ref: String,
    pub draft: bool,
    /// `Closed` also for a merged PR; `merged` tells them apart.
    pub state: PullState,
    pub merged: bool,
}

/// CI's verdict on a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CiState {
    /// Some check has not finished.
    Pending,
    /// Every check finished and none failed (also when there are no checks at all).
    Success,
    /// Every check finished and at least one failed.
    Failure,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CiStatus {
    pub state: CiState,
    pub checks: Vec<Check>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// A check run (GitHub Actions and other apps).
    CheckRun { id: u64 },
    /// A commit status (older integrations), whose `status` is its state.
    Status,
}

/// One check run or commit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The check run's name, or the status's context.
    pub name: String,
    pub kind: CheckKind,
    /// A check run's `queued`/`in_progress`/`completed`/…, or a status's
    /// `pending`/`success`/`failure`/`error`.
    pub status: String,
    /// A completed check run's conclusion; `None` for statuses.
    pub conclusion: Option<String>,
    pub details_url: Option<String>,
    pub title: Option<String>,
    /// A check run's output summary, or a status's description.
    pub summary: Option<String>,
    pub text: Option<String>,
}

/// Conclusions that mean the check did not pass. `timed_out` and `cancelled` are failures: a
/// cancelled or timed-out run proved nothing about the change.
const FAILED_CONCLUSIONS: &[&str] = &[
    "failure",
    "timed_out",
    "cancelled",
    "action_required",
    "startup_failure",
    "stale",
];

impl Check {
    /// Whether the check has not reached a verdict yet.
    pub fn is_pending(&self) -> bool {
        match self.kind {
            CheckKind::CheckRun { .. } => self.status != "completed",
            CheckKind::Status => self.status == "pending",
        }
    }

    /// Whether the check finished and did not pass.
    pub fn is_failure(&self) -> bool {
        match self.kind {
            CheckKind::CheckRun { .. } => {
                self.status == "completed"
                    && self
                        .conclusion
                        .as_deref()
                        .is_some_and(|c| FAILED_CONCLUSIONS.contains(&c))
            }
            CheckKind::Status => matches!(self.status.as_str(), "failure" | "error"),
        }
    }
}

impl CiStatus {
    /// Combines checks by the rules: anything unfinished → pending; else anything failed →
    /// failure; else success (no checks at all counts as success: a repository without CI).
    pub fn from_checks(checks: Vec<Check>) -> Self {
        let state = if checks.iter().any(Check::is_pending) {
            CiState::Pending
        } else if checks.iter().any(Check::is_failure) {
            CiState::Failure
        } else {
            CiState::Success
        };
        Self { state, checks }
    }
}

/// The GitHub client. Cheap to clone; clones share the connection pool and the cached login.
#[derive(Clone)]
pub struct GitHub {
    inner: Arc<Inner>,
}

struct Inner {
    rest: Octocrab,
    /// A second client for GraphQL, whose base is where GraphQL lives (see [`graphql_base`]).
    graphql: Octocrab,
    api_url: Url,
    has_token: bool,
    /// One permit per request in flight ([`GitHubSettings::concurrency`]), held until its
    /// answer is read, so the connection it used is free again.
    requests: Semaphore,
    /// The token's user, looked up once: `None` when the token cannot read `/user` (a GitHub
    /// App installation token), in which case authorship is not checked.
    login: OnceCell<Option<String>>,
}

impl fmt::Debug for GitHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitHub")
            .field("api_url", &self.inner.api_url.as_str())
            .field("token", &self.inner.has_token.then_some("<redacted>"))
            .finish()
    }
}

/// Where GraphQL lives for a REST base URL. octocrab posts GraphQL to `{base}/graphql`, right
/// for `https://api.github.com/`, but GitHub Enterprise Server serves REST at `/api/v3` and
/// GraphQL at `/api/graphql`, so a base ending in `/api/v3` becomes `/api`.
fn graphql_base(api_url: &Url) -> Url {
    let mut url = api_url.clone();
    let path = url.path().trim_end_matches('/').to_string();
    if let Some(prefix) = path.strip_suffix("/api/v3") {
        url.set_path(&format!("{prefix}/api"));
    }
    url
}

fn build_client(base: &Url, token: Option<&str>) -> Result<Octocrab, GitHubError> {
    let mut builder = Octocrab::builder()
        // Temporal retries activities with backoff and our writes look before they create;
        // octocrab's retries would resend a POST whose answer was lost and duplicate it.
        .add_retry_config(RetryConfig::None)
        .set_connect_timeout(Some(CONNECT_TIMEOUT))
        .set_read_timeout(Some(IO_TIMEOUT))
        .set_write_timeout(Some(IO_TIMEOUT))
        .base_uri(base.as_str())
        .map_err(|e| GitHubError::Validation(format!("invalid GitHub API URL {base}: {e}")))?;
    if let Some(token) = token {
        builder = builder.personal_token(token.to_string());
    }
    builder
        .build()
        .map_err(|e| GitHubError::Other(error_chain(&e)))
}

/// `owner/name`, checked strictly: it is put into URL paths.
fn parse_repo(repo: &str) -> Result<(&str, &str), GitHubError> {
    let invalid = || GitHubError::Validation(format!("`{repo}` is not a repository (owner/name)"));
    let (owner, name) = repo.split_once('/').ok_or_else(invalid)?;
    let valid = |part: &str| {
        !part.is_empty()
            && part.len() <= 100
            && part != "."
            && part != ".."
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    if valid(owner) && valid(name) {
        Ok((owner, name))
    } else {
        Err(invalid())
    }
}

/// Percent-encodes one path segment (a login like `dependabot[bot]`, a ref).
fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn login_of(user: Option<WireUser>) -> String {
    // A deleted account shows as `null`; GitHub's web UI calls it "ghost".
    user.map(|u| u.login).unwrap_or_else(|| "ghost".to_string())
}

// What we read from GitHub's answers; everything we do not need may be missing.

#[derive(Deserialize)]
struct WireUser {
    login: String,
}

#[derive(Deserialize)]
struct WireRepo {
    full_name: String,
    default_branch: Option<String>,
    clone_url: String,
    html_url: String,
    permissions: Option<WireRepoPermissions>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireRepoPermissions {
    admin: bool,
    maintain: bool,
    push: bool,
}

#[derive(Deserialize)]
struct WireIssue {
    number: u64,
    html_url: String,
    body: Option<String>,
    /// Present on pull requests, which the issues API lists too.
    pull_request: Option<serde_json::Value>,
    created_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct WireComment {
    id: u64,
    html_url: Option<String>,
    user: Option<WireUser>,
    body: Option<String>,
    created_at: DateTime<Utc>,
    path: Option<String>,
    line: Option<u64>,
    /// The line in the diff the comment was made on, kept when a later push outdates `line`.
    original_line: Option<u64>,
}

impl WireComment {
    fn into_comment(self) -> Comment {
        Comment {
            id: self.id,
            author: login_of(self.user),
            body: self.body.unwrap_or_default(),
            created_at: self.created_at,
            line: self.line.or(self.original_line),
            path: self.path,
        }
    }
}

#[derive(Deserialize)]
struct WireReview {
    id: u64,
    user: Option<WireUser>,
    state: String,
    body: Option<String>,
    submitted_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct WireReaction {
    user: Option<WireUser>,
    content: String,
}

#[derive(Deserialize)]
struct WireCollaboratorPermission {
    permission: Option<String>,
    role_name: Option<String>,
}

#[derive(Deserialize)]
struct WirePull {
    number: u64,
    html_url: String,
    node_id: String,
    head: WireHead,
    draft: Option<bool>,
    state: String,
    /// Only on a single PR; lists give `merged_at` instead.
    merged: Option<bool>,
    merged_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct WireHead {
    sha: String,
    #[serde(rename = "ref")]
    ref_name: String,
}

impl WirePull {
    fn into_pull(self) -> Pull {
        Pull {
            number: self.number,
            url: self.html_url,
            node_id: self.node_id,
            head_sha: self.head.sha,
            head_ref: self.head.ref_name,
            draft: self.draft.unwrap_or(false),
            state: if self.state == "open" {
                PullState::Open
            } else {
                PullState::Closed
            },
            merged: self.merged.unwrap_or(self.merged_at.is_some()),
        }
    }
}

#[derive(Deserialize)]
struct WireCheckRuns {
    total_count: Option<u64>,
    #[serde(default)]
    check_runs: Vec<WireCheckRun>,
}

#[derive(Deserialize)]
struct WireCheckRun {
    id: u64,
    name: String,
    status: String,
    conclusion: Option<String>,
    details_url: Option<String>,
    html_url: Option<String>,
    output: Option<WireCheckOutput>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireCheckOutput {
    title: Option<String>,
    summary: Option<String>,
    text: Option<String>,
}

#[derive(Deserialize)]
struct WireCombinedStatus {
    total_count: Option<u64>,
    #[serde(default)]
    statuses: Vec<WireStatus>,
}

#[derive(Deserialize)]
struct WireStatus {
    context: String,
    state: String,
    target_url: Option<String>,
    description: Option<String>,
}

impl GitHub {
    /// Builds the client. Must be called inside a Tokio runtime (see the module docs).
    pub fn new(settings: GitHubSettings) -> Result<Self, GitHubError> {
        // octocrab spawns its buffer worker here and would panic outside a runtime.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(GitHubError::Other(
                "the GitHub client must be built inside a Tokio runtime".to_string(),
            ));
        }
        let token = settings.token.as_deref().filter(|t| !t.is_empty());
        let rest = build_client(&settings.api_url, token)?;
        let graphql = build_client(&graphql_base(&settings.api_url), token)?;
        Ok(Self {
            inner: Arc::new(Inner {
                rest,
                graphql,
                api_url: settings.api_url,
                has_token: token.is_some(),
                requests: Semaphore::new(settings.concurrency.max(1)),
                login: OnceCell::new(),
            }),
        })
    }

    /// Waits for a turn to send one request (see [`DEFAULT_CONCURRENCY`]). Held across the
    /// request and the reading of its answer, never across another `slot`: a task holding one
    /// while it waits for a second could wait forever.
    async fn slot(&self) -> Result<SemaphorePermit<'_>, GitHubError> {
        self.inner
            .requests
            .acquire()
            .await
            .map_err(|_closed| GitHubError::Other("the GitHub client was closed".into()))
    }

    async fn get<T: DeserializeOwned>(&self, route: &str) -> Result<T, GitHubError> {
        let _slot = self.slot().await?;
        Ok(self.inner.rest.get(route, None::<&()>).await?)
    }

    async fn post<T: DeserializeOwned>(
        &self,
        route: &str,
        body: &serde_json::Value,
    ) -> Result<T, GitHubError> {
        let _slot = self.slot().await?;
        Ok(self.inner.rest.post(route, Some(body)).await?)
    }

    /// A `PATCH` whose answer we do not need (it is read so the connection can be reused).
    async fn patch(&self, route: &str, body: &serde_json::Value) -> Result<(), GitHubError> {
        let _slot = self.slot().await?;
        let response = self.inner.rest._patch(route, Some(body)).await?;
        let response = octocrab::map_github_error(response).await?;
        self.inner.rest.body_to_string(response).await?;
        Ok(())
    }

    /// Visits the pages of a list, following GitHub's `Link: rel="next"`, until `visit` breaks.
    async fn each_page<T: DeserializeOwned>(
        &self,
        route: &str,
        params: &[(&str, &str)],
        mut visit: impl FnMut(Vec<T>) -> ControlFlow<()>,
    ) -> Result<(), GitHubError> {
        let mut params = params.to_vec();
        params.push(("per_page", PER_PAGE));
        let mut page: Page<T> = {
            let _slot = self.slot().await?;
            self.inner.rest.get(route, Some(&params)).await?
        };
        for _ in 0..MAX_PAGES {
            if visit(page.take_items()).is_break() {
                return Ok(());
            }
            let Some(next) = page.next.take() else {
                return Ok(());
            };
            // The link is absolute; octocrab sends the token to it because its host is the
            // API's own.
            let _slot = self.slot().await?;
            page = self.inner.rest.get(next.to_string(), None::<&()>).await?;
        }
        Err(GitHubError::Other(format!(
            "{route}: GitHub kept linking to more pages after {MAX_PAGES}"
        )))
    }

    async fn all_pages<T: DeserializeOwned>(
        &self,
        route: &str,
        params: &[(&str, &str)],
    ) -> Result<Vec<T>, GitHubError> {
        let mut all = Vec::new();
        self.each_page(route, params, |items| {
            all.extend(items);
            ControlFlow::Continue(())
        })
        .await?;
        Ok(all)
    }

    /// The token's login, looked up once.
    async fn login(&self) -> Result<Option<&str>, GitHubError> {
        let login = self
            .inner
            .login
            .get_or_try_init(|| async {
                match self.get::<WireUser>("/user").await {
                    Ok(user) => Ok(Some(user.login)),
                    // Installation tokens may not read /user: fall back to the marker alone,
                    // which is specific enough (it names the task).
                    Err(GitHubError::Forbidden(message)) => {
                        tracing::warn!(%message, "cannot read the token's user; \
                            finding issues and comments by marker alone");
                        Ok(None)
                    }
                    Err(error) => Err(error),
                }
            })
            .await?;
        Ok(login.as_deref())
    }

    /// The repository, and whether the token may push to it.
    pub async fn repo_access(&self, repo: &str) -> Result<RepoAccess, GitHubError> {
        let (owner, name) = parse_repo(repo)?;
        let wire: WireRepo = self.get(&format!("/repos/{owner}/{name}")).await?;
        let permissions = wire.permissions.unwrap_or_default();
        Ok(RepoAccess {
            full_name: wire.full_name,
            // An empty repository has no default branch yet; `main` is what a first push makes.
            default_branch: wire.default_branch.unwrap_or_else(|| "main".to_string()),
            clone_url: wire.clone_url,
            html_url: wire.html_url,
            can_push: permissions.push || permissions.maintain || permissions.admin,
        })
    }

    /// The issue whose body contains `marker` among those the token's user opened (open or
    /// closed), or a new one. Pull requests, which the issues API also lists, are skipped.
    ///
    /// `opened_after`: the issue, if it exists, cannot be older (its task was created then).
    /// The search reads newest first and stops at older issues, so it costs a page or two
    /// however many issues the bot has opened in the repository over time; without it, every
    /// new task read them all.
    pub async fn find_or_create_issue(
        &self,
        repo: &str,
        marker: &str,
        title: &str,
        body: &str,
        labels: &[String],
        opened_after: Option<DateTime<Utc>>,
    ) -> Result<IssueRef, GitHubError> {
        let (owner, name) = parse_repo(repo)?;
        if marker.is_empty() {
            return Err(GitHubError::Validation(
                "an issue marker must not be empty".into(),
            ));
        }
        let route = format!("/repos/{owner}/{name}/issues");
        let login = self.login().await?;
        let mut params = vec![("state", "all"), ("sort", "created"), ("direction", "desc")];
        if let Some(login) = login {
            params.push(("creator", login));
        }
        let mut found = None;
        // Our clock and GitHub's may disagree a little.
        let cutoff = opened_after.map(|at| at - chrono::Duration::minutes(10));
        self.each_page(&route, &params, |issues: Vec<WireIssue>| {
            let older = cutoff.is_some_and(|cutoff| {
                issues
                    .iter()
                    .any(|issue| issue.created_at.is_some_and(|at| at < cutoff))
            });
            found = issues.into_iter().find(|issue| {
                issue.pull_request.is_none()
                    && issue.body.as_deref().is_some_and(|b| b.contains(marker))
            });
            if found.is_some() || older {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .await?;
        let issue = match found {
            Some(issue) => issue,
            None => {
                self.post(
                    &route,
                    &json!({ "title": title, "body": body, "labels": labels }),
                )
                .await?
            }
        };
        Ok(IssueRef {
            number: issue.number,
            url: issue.html_url,
        })
    }

    /// Changes the given fields of an issue (or a PR's title, body, state and labels).
    pub async fn update_issue(
        &self,
        repo: &str,
        number: u64,
        update: IssueUpdate,
    ) -> Result<(), GitHubError> {
        let (owner, name) = parse_repo(repo)?;
        if let Some(state) = update.state.as_deref()
            && state != "open"
            && state != "closed"
        {
            return Err(GitHubError::Validation(format!(
                "an issue's state is open or closed, not `{state}`"
            )));
        }
        let mut body = serde_json::Map::new();
        if let Some(title) = update.title {
            body.insert("title".into(), title.into());
        }
        if let Some(text) = update.body {
            body.insert("body".into(), text.into());
        }
        if let Some(state) = update.state {
            body.insert("state".into(), state.into());
        }
        if let Some(labels) = update.labels {
            body.insert("labels".into(), labels.into());
        }
        if body.is_empty() {
            return Ok(());
        }
        self.patch(
            &format!("/repos/{owner}/{name}/issues/{number}"),
            &serde_json::Value::Object(body),
        )
        .await
    }

    /// Closes an issue (closing a closed issue is fine).
    pub async fn close_issue(&self, repo: &str, number: u64) -> Result<(), GitHubError> {
        self.update_issue(
            repo,
            number,
            IssueUpdate {
                state: Some("closed".to_string()),
                ..IssueUpdate::default()
            },
        )
        .await
    }

    /// Writes the comment that carries `marker` on an issue or PR: the token user's existing
    /// one is updated (only if its body differs) and returned, otherwise a new one is created.
    /// A retried write therefore never leaves two comments.
    pub async fn upsert_comment(
        &self,
        repo: &str,
        number: u64,
        marker: &str,
        body: &str,
    ) -> Result<CommentRef, GitHubError> {
        let (owner, name) = parse_repo(repo)?;
        if marker.is_empty() {
            return Err(GitHubError::Validation(
                "a comment marker must not be empty".into(),
            ));
        }
        let login = self.login().await?;
        let comments: Vec<WireComment> = self
            .all_pages(
                &format!("/repos/{owner}/{name}/issues/{number}/comments"),
                &[],
            )
            .await?;
        let existing = comments.into_iter().find(|c| {
            let ours = match (login, &c.user) {
                (Some(login), Some(user)) => user.login == login,
                (Some(_), None) => false,
                (None, _) => true,
            };
            ours && c.body.as_deref().is_some_and(|b| b.contains(marker))
        });
        let comment: WireComment = match existing {
            Some(comment) if comment.body.as_deref() == Some(body) => comment,
            Some(comment) => {
                let route = format!("/repos/{owner}/{name}/issues/comments/{}", comment.id);
                let _slot = self.slot().await?;
                let updated: WireComment = self
                    .inner
                    .rest
                    .patch(&route, Some(&json!({ "body": body })))
                    .await?;
                updated
            }
            None => {
                self.post(
                    &format!("/repos/{owner}/{name}/issues/{number}/comments"),
                    &json!({ "body": body }),
                )
                .await?
            }
        };
        Ok(CommentRef {
            id: comment.id,
            url: comment.html_url.unwrap_or_default(),
            created_at: comment.created_at,
        })
    }

    /// An issue's or PR's conversation comments, oldest first. With `since`, GitHub returns
    /// those *updated* at or after it, so callers that want new comments compare `created_at`.
    pub async fn comments_since(
        &self,
        repo: &str,
        number: u64,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<Comment>, GitHubError> {
        let (owner, name) = parse_repo(repo)?;
        let since = since.map(|s| s.to_rfc3339_opts(SecondsFormat::Secs, true));
        let mut params = Vec::new();
        if let Some(since) = since.as_deref() {
            params.push(("since", since));
        }
        let comments: Vec<WireComment> = self
            .all_pages(
                &format!("/repos/{owner}/{name}/issues/{number}/comments"),
                &params,
            )
            .await?;
        Ok(oldest_first(comments))
    }

    /// A PR's inline review comments, oldest first.
    pub async fn review_comments(&self, repo: &str, pr: u64) -> Result<Vec<Comment>, GitHubError> {
        let (owner, name) = parse_repo(repo)?;
        let comments: Vec<WireComment> = self
            .all_pages(&format!("/repos/{owner}/{name}/pulls/{pr}/comments"), &[])
            .await?;
        Ok(oldest_first(comments))
    }

    /// A PR's reviews, in the order GitHub gives them (oldest first).
    pub async fn reviews(&self, repo: &str, pr: u64) -> Result<Vec<Review>, GitHubError> {
        let (owner, name) = parse_repo(repo)?;
        let reviews: Vec<WireReview> = self
            .all_pages(&format!("/repos/{owner}/{name}/pulls/{pr}/reviews"), &[])
            .await?;
        Ok(reviews
            .into_iter()
            .map(|r| Review {
                id: r.id,
                author: login_of(r.user),
                state: r.state,
                body: r.body.unwrap_or_default(),
                submitted_at: r.submitted_at,
            })
            .collect())
    }

    /// The reactions on an issue or PR conversation comment.
    pub async fn reactions(
        &self,
        repo: &str,
        comment_id: u64,
    ) -> Result<Vec<Reaction>, GitHubError> {
        let (owner, name) = parse_repo(repo)?;
        let reactions: Vec<WireReaction> = self
            .all_pages(
                &format!("/repos/{owner}/{name}/issues/comments/{comment_id}/reactions"),
                &[],
            )
            .await?;
        Ok(reactions
            .into_iter()
            .map(|r| Reaction {
                author: login_of(r.user),
                content: r.content,
            })
            .collect())
    }

    /// Reacts to a comment. GitHub keeps one reaction of a kind per user, so a repeat is a no-op.
    pub async fn add_reaction(
        &self,
        repo: &str,
        kind: CommentKind,
        id: u64,
        content: &str,
    ) -> Result<(), GitHubError> {
        let (owner, name) = parse_repo(repo)?;
        let route = match kind {
            CommentKind::Issue => format!("/repos/{owner}/{name}/issues/comments/{id}/reactions"),
            CommentKind::Review => format!("/repos/{owner}/{name}/pulls/comments/{id}/reactions"),
        };
        let _slot = self.slot().await?;
        let response = self
            .inner
            .rest
            ._post(route.as_str(), Some(&json!({ "content": content })))
            .await?;
        let response = octocrab::map_github_error(response).await?;
        self.inner.rest.body_to_string(response).await?;
        Ok(())
    }

    /// A user's role on the repository. An unknown user has none. Custom roles (a
    /// `role_name` we do not know) fall back to the base `permission` they extend.
    pub async fn permission(&self, repo: &str, login: &str) -> Result<Permission, GitHubError> {
        let (owner, name) = parse_repo(repo)?;
        if login.is_empty() {
            return Ok(Permission::None);
        }
        let route = format!(
            "/repos/{owner}/{name}/collaborators/{}/permission",
            encode_segment(login)
        );
        let wire: WireCollaboratorPermission = match self.get(&route).await {
            Ok(wire) => wire,
            Err(GitHubError::NotFound) => return Ok(Permission::None),
            Err(error) => return Err(error),
        };
        let parse = |text: &str| match text {
            "admin" => Some(Permission::Admin),
            "maintain" => Some(Permission::Maintain),
            "write" | "push" => Some(Permission::Write),
            "triage" => Some(Permission::Triage),
            "read" | "pull" => Some(Permission::Read),
            "none" => Some(Permission::None),
            _ => None,
        };
        Ok(wire
            .role_name
            .as_deref()
            .and_then(parse)
            .or_else(|| wire.permission.as_deref().and_then(parse))
            .unwrap_or(Permission::None))
    }

    /// The PR from `head_branch` (of the repository itself) in any state, newest first, or a
    /// new one into `base`.
    pub async fn find_or_create_pull(
        &self,
        repo: &str,
        head_branch: &str,
        base: &str,
        title: &str,
        body: &str,
        draft: bool,
    ) -> Result<Pull, GitHubError> {
        let (owner, name) = parse_repo(repo)?;
        if head_branch.is_empty() || base.is_empty() {
            return Err(GitHubError::Validation(
                "a pull request needs a head and a base branch".into(),
            ));
        }
        let route = format!("/repos/{owner}/{name}/pulls");
        let head = format!("{owner}:{head_branch}");
        if let Some(pull) = self.pull_from(&route, &head).await? {
            return Ok(pull);
        }
        let created = self
            .post::<WirePull>(
                &route,
                &json!({
                    "title": title,
                    "head": head_branch,
                    "base": base,
                    "body": body,
                    "draft": draft,
                }),
            )
            .await;
        match created {
            Ok(pull) => Ok(pull.into_pull()),
            // Another attempt may have opened it between our look and our create, and GitHub
            // answers 422 "A pull request already exists": that PR is the one we want.
            Err(GitHubError::Validation(message)) => match self.pull_from(&route, &head).await? {
                Some(pull) => Ok(pull),
                None => Err(GitHubError::Validation(message)),
            },
            Err(error) => Err(error),
        }
    }

    async fn pull_from(&self, route: &str, head: &str) -> Result<Option<Pull>, GitHubError> {
        let mut found = None;
        self.each_page(
            route,
            &[("head", head), ("state", "all")],
            |pulls: Vec<WirePull>| {
                found = pulls.into_iter().next();
                ControlFlow::Break(())
            },
        )
        .await?;
        Ok(found.map(WirePull::into_pull))
    }

    pub async fn pull(&self, repo: &str, number: u64) -> Result<Pull, GitHubError> {
        let (owner, name) = parse_repo(repo)?;
        let wire: WirePull = self
            .get(&format!("/repos/{owner}/{name}/pulls/{number}"))
            .await?;
        Ok(wire.into_pull())
    }

    /// Closes a PR without merging it (closing a closed PR is fine).
    pub async fn close_pull(&self, repo: &str, number: u64) -> Result<(), GitHubError> {
        let (owner, name) = parse_repo(repo)?;
        self.patch(
            &format!("/repos/{owner}/{name}/pulls/{number}"),
            &json!({ "state": "closed" }),
        )
        .await
    }

    /// CI on a commit: its check runs (the latest of each) and its commit statuses (the latest
    /// per context), combined by [`CiStatus::from_checks`].
    pub async fn ci_status(&self, repo: &str, sha: &str) -> Result<CiStatus, GitHubError> {
        let (owner, name) = parse_repo(repo)?;
        if sha.is_empty() {
            return Err(GitHubError::Validation(
                "a commit is needed for its CI status".into(),
            ));
        }
        let commit = format!("/repos/{owner}/{name}/commits/{}", encode_segment(sha));
        let mut checks = Vec::new();
        // Neither answer is a bare list, so octocrab's `Page` cannot read them: page by number.
        for page in 1..=MAX_PAGES {
            let page_text = page.to_string();
            let params = [
                ("filter", "latest"),
                ("per_page", PER_PAGE),
                ("page", page_text.as_str()),
            ];
            let wire: WireCheckRuns = {
                let _slot = self.slot().await?;
                self.inner
                    .rest
                    .get(format!("{commit}/check-runs"), Some(&params))
                    .await?
            };
            let count = wire.check_runs.len();
            checks.extend(wire.check_runs.into_iter().map(|run| {
                let output = run.output.unwrap_or_default();
                Check {
                    name: run.name,
                    kind: CheckKind::CheckRun { id: run.id },
                    status: run.status,
                    conclusion: run.conclusion,
                    details_url: run.details_url.or(run.html_url),
                    title: output.title,
                    summary: output.summary,
                    text: output.text,
                }
            }));
            if last_page(count, checks.len(), wire.total_count) {
                break;
            }
        }
        let runs = checks.len();
        for page in 1..=MAX_PAGES {
            let page_text = page.to_string();
            let params = [("per_page", PER_PAGE), ("page", page_text.as_str())];
            let wire: WireCombinedStatus = {
                let _slot = self.slot().await?;
                self.inner
                    .rest
                    .get(format!("{commit}/status"), Some(&params))
                    .await?
            };
            let count = wire.statuses.len();
            checks.extend(wire.statuses.into_iter().map(|status| Check {
                name: status.context,
                kind: CheckKind::Status,
                status: status.state,
                conclusion: None,
                details_url: status.target_url,
                title: None,
                summary: status.description,
                text: None,
            }));
            if last_page(count, checks.len() - runs, wire.total_count) {
                break;
            }
        }
        Ok(CiStatus::from_checks(checks))
    }

    /// What the failed checks of `status` say, for the agent that fixes them: per failed check
    /// a `## Failed: {name}` section with its title, summary and text and, for a GitHub
    /// Actions job, the end of its log (where the error is). The result fits in `max_bytes`,
    /// shared between the checks so one huge log cannot crowd out the others. A log that
    /// cannot be downloaded is noted in its section, not an error.
    pub async fn failure_logs(
        &self,
        repo: &str,
        status: &CiStatus,
        max_bytes: usize,
    ) -> Result<String, GitHubError> {
        let (owner, name) = parse_repo(repo)?;
        let mut sections = Vec::new();
        for check in status.checks.iter().filter(|c| c.is_failure()) {
            let mut head = format!("## Failed: {}\n", check.name);
            let verdict = check.conclusion.as_deref().unwrap_or(&check.status);
            head.push_str(&format!("Result: {verdict}\n"));
            if let Some(url) = &check.details_url {
                head.push_str(&format!("Details: {url}\n"));
            }
            for part in [&check.title, &check.summary, &check.text]
                .into_iter()
                .flatten()
            {
                if !part.trim().is_empty() {
                    head.push('\n');
                    head.push_str(part.trim_end());
                    head.push('\n');
                }
            }
            let job = match check.kind {
                CheckKind::CheckRun { .. } => check.details_url.as_deref().and_then(actions_job_id),
                CheckKind::Status => None,
            };
            let log = match job {
                None => None,
                Some(job) => match self.job_log(owner, name, job, max_bytes).await {
                    Ok(log) => Some(log),
                    Err(error) => {
                        tracing::warn!(%error, job, "cannot download a failed job's log");
                        head.push_str(&format!(
                            "\n_(the job log could not be downloaded: {error})_\n"
                        ));
                        None
                    }
                },
            };
            sections.push((head, log));
        }
        if sections.is_empty() {
            return Ok(cut_end(
                "CI failed, but no failed check was reported.",
                max_bytes,
            ));
        }
        Ok(render_sections(&sections, max_bytes))
    }

    /// The end of an Actions job's log, at most `keep` bytes, without timestamps and colours.
    async fn job_log(
        &self,
        owner: &str,
        name: &str,
        job: u64,
        keep: usize,
    ) -> Result<String, GitHubError> {
        // GitHub answers 302 with a short-lived download URL; octocrab's redirect layer follows
        // it and drops the token if the URL is on another host.
        let route = format!("/repos/{owner}/{name}/actions/jobs/{job}/logs");
        let _slot = self.slot().await?;
        let response = self.inner.rest._get(route.as_str()).await?;
        let response = octocrab::map_github_error(response).await?;
        let text = match self.inner.rest.body_to_string(response).await {
            Ok(text) => text,
            // A log is text but may hold stray bytes; the error keeps them, so read it lossily.
            Err(octocrab::Error::InvalidUtf8 { source, .. }) => {
                String::from_utf8_lossy(source.as_bytes()).into_owned()
            }
            Err(error) => return Err(error.into()),
        };
        let cleaned = clean_log(&text);
        Ok(tail(cleaned.trim_end(), keep).to_string())
    }

    /// Marks a draft PR ready for review (GraphQL; REST cannot). A GraphQL answer with
    /// `errors` is an error even though its HTTP status is 200.
    pub async fn mark_ready_for_review(&self, pull_node_id: &str) -> Result<(), GitHubError> {
        if pull_node_id.is_empty() {
            return Err(GitHubError::Validation(
                "a pull request node id is needed".into(),
            ));
        }
        let query = "mutation($id: ID!) { markPullRequestReadyForReview(input: {pullRequestId: $id}) \
                     { pullRequest { isDraft } } }";
        let _slot = self.slot().await?;
        let answer: serde_json::Value = self
            .inner
            .graphql
            .post(
                "/graphql",
                Some(&json!({ "query": query, "variables": { "id": pull_node_id } })),
            )
            .await?;
        match answer.get("errors").and_then(|e| e.as_array()) {
            Some(errors) if !errors.is_empty() => Err(graphql_error(errors)),
            _ => Ok(()),
        }
    }
}

/// Sorts GraphQL errors (`{"type":"NOT_FOUND","message":…}`) like their REST equivalents.
fn graphql_error(errors: &[serde_json::Value]) -> GitHubError {
    let kind = |e: &serde_json::Value| e.get("type").and_then(|t| t.as_str()).map(str::to_string);
    let message = errors
        .iter()
        .map(|e| match e.get("message").and_then(|m| m.as_str()) {
            Some(message) => message.to_string(),
            None => e.to_string(),
        })
        .collect::<Vec<_>>()
        .join("; ");
    let kinds: Vec<String> = errors.iter().filter_map(kind).collect();
    if kinds.iter().any(|k| k == "NOT_FOUND") {
        GitHubError::NotFound
    } else if kinds.iter().any(|k| k == "RATE_LIMITED") {
        GitHubError::RateLimited { retry_after: None }
    } else if kinds.iter().any(|k| k == "FORBIDDEN") {
        GitHubError::Forbidden(message)
    } else {
        GitHubError::Validation(message)
    }
}

fn oldest_first(comments: Vec<WireComment>) -> Vec<Comment> {
    let mut comments: Vec<Comment> = comments
        .into_iter()
        .map(WireComment::into_comment)
        .collect();
    comments.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    comments
}

/// Whether a numbered page was the last: it was empty, the total is reached, or (without a
/// total) it was not full.
fn last_page(count: usize, collected: usize, total: Option<u64>) -> bool {
    count == 0
        || match total {
            Some(total) => u64::try_from(collected).unwrap_or(u64::MAX) >= total,
            None => count < 100,
        }
}

/// The job id in an Actions check run's details URL: `…/actions/runs/{run}/job/{job}`.
fn actions_job_id(url: &str) -> Option<u64> {
    let (_, rest) = url.split_once("/actions/runs/")?;
    let (run, rest) = rest.split_once("/job/")?;
    if run.is_empty() || !run.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

const LOG_OPEN: &str = "\n### End of the job log\n```\n";
const LOG_CLOSE: &str = "\n```\n";

/// Joins the failed checks' sections within `max_bytes`. Each section gets an equal share;
/// what a short section leaves goes to the longer ones.
fn render_sections(sections: &[(String, Option<String>)], max_bytes: usize) -> String {
    const SEPARATOR: &str = "\n";
    let count = sections.len();
    let budget = max_bytes.saturating_sub(SEPARATOR.len() * count.saturating_sub(1));
    let wants: Vec<usize> = sections
        .iter()
        .map(|(head, log)| {
            head.len()
                + log
                    .as_ref()
                    .map_or(0, |log| LOG_OPEN.len() + log.len() + LOG_CLOSE.len())
        })
        .collect();
    let mut order: Vec<usize> = (0..count).collect();
    order.sort_by_key(|&i| wants[i]);
    let mut shares = vec![0; count];
    let mut left = budget;
    for (done, &i) in order.iter().enumerate() {
        let share = (left / (count - done)).min(wants[i]);
        shares[i] = share;
        left -= share;
    }
    let text = sections
        .iter()
        .zip(&shares)
        .map(|((head, log), &share)| render_section(head, log.as_deref(), share))
        .filter(|section| !section.is_empty())
        .collect::<Vec<_>>()
        .join(SEPARATOR);
    // The shares already fit; this only guards the arithmetic.
    cut_end(&text, max_bytes)
}

/// One failed check within `limit` bytes: its description first (cut at the end if needed,
/// keeping at least half the room when there is a log), then as much of the log's end as fits.
fn render_section(head: &str, log: Option<&str>, limit: usize) -> String {
    let Some(log) = log else {
        return cut_end(head, limit);
    };
    let log_len = LOG_OPEN.len() + log.len() + LOG_CLOSE.len();
    if head.len() + log_len <= limit {
        return format!("{head}{LOG_OPEN}{log}{LOG_CLOSE}");
    }
    let head_budget = head.len().min(limit - log_len.min(limit / 2));
    let head_part = cut_end(head, head_budget);
    let room = limit.saturating_sub(head_part.len());
    if log_len <= room {
        return format!("{head_part}{LOG_OPEN}{log}{LOG_CLOSE}");
    }
    let frame = LOG_OPEN.len() + TRUNCATED.len() + 1 + LOG_CLOSE.len();
    if room <= frame {
        return head_part;
    }
    let mut end = tail(log, room - frame);
    // Start at a whole line when one begins soon after the cut.
    if let Some(newline) = end.find('\n')
        && newline < 200
        && newline + 1 < end.len()
    {
        end = &end[newline + 1..];
    }
    format!("{head_part}{LOG_OPEN}{TRUNCATED}\n{end}{LOG_CLOSE}")
}

/// The start of `text` in at most `limit` bytes, cut on a char boundary and marked when cut.
fn cut_end(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let marker = format!("\n{TRUNCATED}");
    if limit < marker.len() {
        return text[..floor_boundary(text, limit)].to_string();
    }
    let keep = floor_boundary(text, limit - marker.len());
    format!("{}{marker}", &text[..keep])
}

/// The end of `text` in at most `limit` bytes, cut on a char boundary.
fn tail(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut start = text.len() - limit;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

fn floor_boundary(text: &str, index: usize) -> usize {
    let mut index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// An Actions log without what costs bytes and says nothing to a reader: the timestamp that
/// starts every line and ANSI colour codes.
fn clean_log(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.trim_start_matches('\u{feff}').lines() {
        let mut chars = strip_timestamp(line).chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' && chars.peek() == Some(&'[') {
                // A CSI sequence runs to its final byte, `@` to `~`.
                for c in chars.by_ref().skip(1) {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out.push('\n');
    }
    out
}

/// `2024-05-01T12:34:56.1234567Z message` → `message`.
fn strip_timestamp(line: &str) -> &str {
    let bytes = line.as_bytes();
    let stamped = bytes.len() >= 20
        && bytes[..4].iter().all(u8::is_ascii_digit)
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b'T';
    if !stamped {
        return line;
    }
    match bytes.iter().take(40).position(|&b| b == b'Z') {
        Some(z) if z + 1 == bytes.len() => "",
        Some(z) if bytes[z + 1] == b' ' => &line[z + 2..],
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repos_are_parsed_strictly() {
        assert_eq!(
            parse_repo("octo-org/hello.rs").unwrap(),
            ("octo-org", "hello.rs")
        );
        for bad in [
            "", "owner", "owner/", "/name", "a/b/c", "a/..", "a b/c", "a/b?x", "a/b#c",
        ] {
            assert!(
                matches!(parse_repo(bad), Err(GitHubError::Validation(_))),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn graphql_lives_beside_enterprise_rest() {
        let url = |s: &str| Url::parse(s).unwrap();
        assert_eq!(
            graphql_base(&url("https://api.github.com/")).as_str(),
            "https://api.github.com/"
        );
        assert_eq!(
            graphql_base(&url("https://ghe.example.com/api/v3")).as_str(),
            "https://ghe.example.com/api"
        );
        assert_eq!(
            graphql_base(&url("https://ghe.example.com/api/v3/")).as_str(),
            "https://ghe.example.com/api"
        );
    }

    #[test]
    fn job_ids_come_from_actions_urls_only() {
        assert_eq!(
            actions_job_id("https://github.com/o/r/actions/runs/12/job/345?pr=1"),
            Some(345)
        );
        assert_eq!(
            actions_job_id("https://github.com/o/r/actions/runs/12"),
            None
        );
        assert_eq!(actions_job_id("https://ci.example.com/build/7"), None);
        assert_eq!(
            actions_job_id("https://github.com/o/r/actions/runs/x/job/3"),
            None
        );
    }

    fn run(name: &str, status: &str, conclusion: Option<&str>) -> Check {
        Check {
            name: name.into(),
            kind: CheckKind::CheckRun { id: 1 },
            status: status.into(),
            conclusion: conclusion.map(Into::into),
            details_url: None,
            title: None,
            summary: None,
            text: None,
        }
    }

    #[test]
    fn ci_rules() {
        let status = |state: &str| Check {
            kind: CheckKind::Status,
            ..run("ci/build", state, None)
        };
        let state = |checks: Vec<Check>| CiStatus::from_checks(checks).state;
        assert_eq!(state(vec![]), CiState::Success);
        assert_eq!(
            state(vec![
                run("a", "completed", Some("success")),
                status("success")
            ]),
            CiState::Success
        );
        assert_eq!(
            state(vec![
                run("a", "completed", Some("skipped")),
                run("b", "completed", Some("neutral"))
            ]),
            CiState::Success
        );
        for failed in FAILED_CONCLUSIONS {
            assert_eq!(
                state(vec![run("a", "completed", Some(failed))]),
                CiState::Failure,
                "{failed}"
            );
        }
        assert_eq!(state(vec![status("error")]), CiState::Failure);
        // Pending wins: a fix must not start while a run that could still pass is going.
        assert_eq!(
            state(vec![
                run("a", "completed", Some("failure")),
                run("b", "queued", None)
            ]),
            CiState::Pending
        );
        assert_eq!(
            state(vec![status("pending"), status("failure")]),
            CiState::Pending
        );
    }

    #[test]
    fn cuts_respect_the_budget_and_char_boundaries() {
        let text = "é".repeat(100);
        for limit in 0..40 {
            let cut = cut_end(&text, limit);
            assert!(cut.len() <= limit, "{limit}: {}", cut.len());
            assert!(tail(&text, limit).len() <= limit);
        }
        assert!(cut_end(&text, 30).ends_with(TRUNCATED));
    }

    #[test]
    fn sections_share_the_budget_and_keep_log_tails() {
        let log = |last: &str| format!("{}\n{last}\n", "noise line\n".repeat(2_000));
        let sections = vec![
            ("## Failed: a\n".to_string(), Some(log("error: a broke"))),
            ("## Failed: b\n".to_string(), Some(log("error: b broke"))),
            ("## Failed: c\nshort\n".to_string(), None),
        ];
        for max in [0, 10, 100, 500, 2_000, 50_000] {
            let text = render_sections(&sections, max);
            assert!(text.len() <= max, "{max}: {}", text.len());
            if max >= 500 {
                for wanted in [
                    "## Failed: a",
                    "error: a broke",
                    "## Failed: b",
                    "error: b broke",
                    "short",
                ] {
                    assert!(text.contains(wanted), "{max}: {wanted} missing from {text}");
                }
            }
        }
    }

    #[test]
    fn logs_lose_timestamps_and_colours() {
        let raw = "\u{feff}2024-05-01T12:34:56.1234567Z ##[group]Run cargo test\n\
                   2024-05-01T12:34:57.0000000Z \u{1b}[31merror\u{1b}[0m: it broke\nplain line\n";
        assert_eq!(
            clean_log(raw),
            "##[group]Run cargo test\nerror: it broke\nplain line\n"
        );
    }

    #[test]
    fn debug_hides_the_token() {
        let settings = GitHubSettings {
            api_url: Url::parse(DEFAULT_API_URL).unwrap(),
            token: Some("ghp_secret".into()),
            concurrency: DEFAULT_CONCURRENCY,
        };
        assert!(!format!("{settings:?}").contains("ghp_secret"));
    }
}
