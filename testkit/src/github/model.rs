//! The fake's public vocabulary: permissions, CI scripts, and the plain snapshots of issues,
//! comments, pull requests, reviews and reactions that tests inspect. Conversions from the
//! internal records live in [`super::view`], so these types carry no server state.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// A user's role on a repository, lowest first. GitHub's legacy `permission` strings map
/// `maintain` to `write` and `triage` to `read`; `role_name` keeps the exact role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    Read,
    Triage,
    Write,
    Maintain,
    Admin,
}

impl Permission {
    /// Whether the role may push, label, assign and edit other people's issues and comments.
    pub fn can_push(self) -> bool {
        self >= Self::Write
    }

    /// The legacy value of `permission` in the collaborator-permission endpoint.
    pub fn legacy_name(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Maintain | Self::Write => "write",
            Self::Triage | Self::Read => "read",
        }
    }

    /// The exact role, as in `role_name`.
    pub fn role_name(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Maintain => "maintain",
            Self::Write => "write",
            Self::Triage => "triage",
            Self::Read => "read",
        }
    }
}

/// Open or closed; pull requests that were merged are closed too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssueState {
    Open,
    Closed,
}

impl IssueState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
        }
    }
}

/// The verdict of a submitted review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReviewState {
    Approved,
    ChangesRequested,
    Commented,
}

impl ReviewState {
    /// The REST API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approved => "APPROVED",
            Self::ChangesRequested => "CHANGES_REQUESTED",
            Self::Commented => "COMMENTED",
        }
    }
}

/// How a repository's CI judges each new head commit. Check runs are created lazily, the
/// first time anyone reads a commit's checks or status, so "the first n SHAs" means the
/// first n distinct SHAs whose CI was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CiScript {
    AlwaysPass,
    NeverPass,
    /// The first `n` distinct SHAs fail, later ones pass.
    FailTimes(u32),
}

impl CiScript {
    /// Each new SHA's checks report `in_progress` for its first `k` reads (counted per
    /// endpoint: check runs and combined status separately) before their result.
    #[must_use]
    pub fn pending_polls(self, k: u32) -> CiSetup {
        CiSetup {
            script: self,
            pending_polls: k,
        }
    }
}

/// A [`CiScript`] plus how long new runs stay pending; what [`super::FakeGitHub::set_ci`]
/// takes. Every repository starts with `AlwaysPass` and no pending polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CiSetup {
    pub script: CiScript,
    pub pending_polls: u32,
}

impl From<CiScript> for CiSetup {
    fn from(script: CiScript) -> Self {
        script.pending_polls(0)
    }
}

impl Default for CiSetup {
    fn default() -> Self {
        CiScript::AlwaysPass.into()
    }
}

/// An issue or pull request as the issues API sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub number: u64,
    pub title: String,
    pub body: Option<String>,
    pub author: String,
    pub state: IssueState,
    pub state_reason: Option<String>,
    pub labels: Vec<String>,
    pub assignees: Vec<String>,
    pub is_pull_request: bool,
    pub comments: usize,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
}

/// A comment on an issue or on a pull request's conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment {
    pub id: u64,
    pub number: u64,
    pub author: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A pull request. `head_sha` is the head branch's tip as of the last push the fake served
/// (or its own git work), `None` once the branch is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pull {
    pub number: u64,
    pub node_id: String,
    pub title: String,
    pub body: Option<String>,
    pub author: String,
    pub state: IssueState,
    pub draft: bool,
    pub merged: bool,
    pub merged_at: Option<DateTime<Utc>>,
    pub merge_commit_sha: Option<String>,
    pub head_ref: String,
    pub base_ref: String,
    pub head_sha: Option<String>,
    pub html_url: String,
}

/// A reaction on an issue comment or a review comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    pub id: u64,
    pub user: String,
    pub content: String,
    pub created_at: DateTime<Utc>,
}

/// A submitted pull-request review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    pub id: u64,
    pub author: String,
    pub state: ReviewState,
    pub body: String,
    pub commit_id: Option<String>,
    pub submitted_at: DateTime<Utc>,
}

/// An inline comment of a review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewComment {
    pub id: u64,
    pub review_id: u64,
    pub author: String,
    pub body: String,
    pub path: String,
    pub line: u64,
    pub commit_id: String,
    pub created_at: DateTime<Utc>,
}

/// One `POST /graphql`, answered or not.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphqlCall {
    /// `None` when the token was refused.
    pub login: Option<String>,
    pub query: String,
    pub variables: Value,
    /// Whether the response carried `data` without `errors`.
    pub ok: bool,
}
