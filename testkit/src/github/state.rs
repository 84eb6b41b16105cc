//! The fake's memory: users and tokens, repositories with their issues, pull requests,
//! labels and CI runs, comments, reactions, and the logs tests inspect (requests, GraphQL
//! calls, pending faults). Everything sits in one [`State`] behind one mutex in [`Shared`],
//! whose [`Notify`] wakes waiters after every change.
//!
//! Git data is not here: branches and commits live in the bare repositories on disk. The
//! `branches` map of each repository is only a cache of their tips, refreshed after every
//! push the fake serves and every git operation it performs itself, so that synchronous
//! inspection can see them.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, SubsecRound as _, Utc};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::hooks::{Delivery, Receiver};
use super::model::{CiSetup, GraphqlCall, IssueState, Permission, ReviewState};

/// What the server's tasks and the test handle share.
pub(crate) struct Shared {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub base_url: String,
    /// `GIT_PROJECT_ROOT`: bare repositories live at `{root}/{owner}/{name}.git`, lowercased.
    pub git_root: PathBuf,
    /// `HOME` for every git process, so no user or system config leaks in.
    pub git_home: PathBuf,
    /// Scratch space for clones the fake makes itself (initial commits, merges).
    pub scratch: PathBuf,
    pub state: Mutex<State>,
    /// Woken (all waiters) after every change to `state`.
    pub changed: Notify,
    /// Woken (one permit kept) when a change queued webhook deliveries.
    pub hooks_ready: Notify,
    /// Cancelled when the server stops: ends the webhook sender.
    pub stop: CancellationToken,
    /// Owns the directory tree above; removed when the last handle goes.
    pub _dir: tempfile::TempDir,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test may poison the lock; every critical section leaves the state
        // consistent, so the data is still good.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `change` under the lock, then wakes every waiter.
    pub fn mutate<T>(&self, change: impl FnOnce(&mut State) -> T) -> T {
        let (out, hooks) = {
            let mut state = self.lock();
            let out = change(&mut state);
            (out, !state.outgoing.is_empty())
        };
        self.changed.notify_waiters();
        if hooks {
            self.hooks_ready.notify_one();
        }
        out
    }

    pub fn bare_path(&self, key: &str) -> PathBuf {
        self.git_root.join(format!("{key}.git"))
    }
}

pub(crate) fn now() -> DateTime<Utc> {
    // GitHub's timestamps have whole seconds; `since` filters compare at that precision.
    Utc::now().trunc_subsecs(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AccountKind {
    User,
    Organization,
}

#[derive(Debug, Clone)]
pub(crate) struct UserRec {
    pub login: String,
    pub id: u64,
    pub kind: AccountKind,
}

#[derive(Debug, Clone)]
pub(crate) struct LabelRec {
    pub id: u64,
    pub name: String,
    pub color: String,
}

#[derive(Debug, Clone)]
pub(crate) struct ReviewRec {
    pub id: u64,
    pub author: String,
    pub body: String,
    pub state: ReviewState,
    pub commit_id: Option<String>,
    pub submitted_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub(crate) struct PullRec {
    pub id: u64,
    pub head_ref: String,
    pub base_ref: String,
    /// The head branch's tip as last seen; kept when the branch is deleted, frozen once the
    /// pull request is closed.
    pub head_sha: String,
    pub draft: bool,
    pub merged_at: Option<DateTime<Utc>>,
    pub merged_by: Option<String>,
    pub merge_commit_sha: Option<String>,
    pub reviews: Vec<ReviewRec>,
}

#[derive(Debug, Clone)]
pub(crate) struct IssueRec {
    pub id: u64,
    pub number: u64,
    pub title: String,
    pub body: Option<String>,
    /// Lowercased login, like every login stored in records.
    pub author: String,
    pub state: IssueState,
    pub state_reason: Option<String>,
    /// Canonical label names, in the order they were added.
    pub labels: Vec<String>,
    pub assignees: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    pub closed_by: Option<String>,
    /// Present when the number is a pull request (they share the issue sequence).
    pub pull: Option<PullRec>,
}

/// One commit's CI, created on first read.
#[derive(Debug, Clone)]
pub(crate) struct CiRun {
    pub run_id: u64,
    pub test_job: u64,
    pub lint_job: u64,
    pub status_id: u64,
    pub fail: bool,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub check_reads: u32,
    pub status_reads: u32,
    /// The `sig` the log download URL must carry, like a signed blob URL.
    pub log_sig: String,
}

#[derive(Debug, Clone)]
pub(crate) struct RepoRec {
    pub owner: String,
    pub name: String,
    pub id: u64,
    pub created_at: DateTime<Utc>,
    pub default_branch: String,
    pub collaborators: BTreeMap<String, Permission>,
    /// Keyed by lowercased name.
    pub labels: BTreeMap<String, LabelRec>,
    pub issues: BTreeMap<u64, IssueRec>,
    pub next_number: u64,
    pub ci: CiSetup,
    /// Keyed by commit SHA.
    pub ci_runs: HashMap<String, CiRun>,
    /// How many SHAs have been judged failing so far (for `FailTimes`).
    pub failed_shas: u32,
    /// Cache of branch tips (see the module docs).
    pub branches: BTreeMap<String, String>,
}

impl RepoRec {
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct CommentRec {
    pub id: u64,
    pub repo: String,
    pub number: u64,
    pub author: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub(crate) struct ReviewCommentRec {
    pub id: u64,
    pub repo: String,
    pub number: u64,
    pub review_id: u64,
    pub author: String,
    pub body: String,
    pub path: String,
    pub line: u64,
    pub commit_id: String,
    pub created_at: DateTime<Utc>,
}

/// What a reaction is on: issue comments and review comments have separate endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Subject {
    IssueComment(u64),
    ReviewComment(u64),
}

#[derive(Debug, Clone)]
pub(crate) struct ReactionRec {
    pub id: u64,
    pub subject: Subject,
    pub user: String,
    pub content: String,
    pub created_at: DateTime<Utc>,
}

/// A request held back before it is served: see [`super::FakeGitHub::hold_next`].
pub(crate) struct Hold {
    pub arrived: tokio::sync::Semaphore,
    pub released: tokio::sync::Semaphore,
}

impl Default for Hold {
    fn default() -> Self {
        Self {
            arrived: tokio::sync::Semaphore::new(0),
            released: tokio::sync::Semaphore::new(0),
        }
    }
}

pub(crate) struct State {
    next_id: u64,
    pub bot: String,
    pub bot_token: String,
    /// Keyed by lowercased login.
    pub users: BTreeMap<String, UserRec>,
    /// Token to lowercased login.
    pub tokens: HashMap<String, String>,
    /// Keyed by lowercased `owner/name`.
    pub repos: BTreeMap<String, RepoRec>,
    pub comments: BTreeMap<u64, CommentRec>,
    pub review_comments: BTreeMap<u64, ReviewCommentRec>,
    pub reactions: Vec<ReactionRec>,
    /// `(method, path, status)` of every request answered.
    pub requests: Vec<(String, String, u16)>,
    /// Pending injected failures: `(path prefix, status)`, each used once.
    pub faults: Vec<(String, u16)>,
    /// Pending holds: `(method, path prefix, hold)`, each used once.
    pub holds: Vec<(String, String, Arc<Hold>)>,
    pub graphql: Vec<GraphqlCall>,
    /// Where webhook deliveries go; none are made without one.
    pub receiver: Option<Receiver>,
    /// Webhook deliveries not yet posted: `(event, payload)`.
    pub outgoing: Vec<(String, Value)>,
    /// Webhook deliveries posted, in order.
    pub deliveries: Vec<Delivery>,
    ghost: UserRec,
}

impl State {
    pub fn new(bot: &str, bot_token: &str) -> Self {
        let mut state = Self {
            next_id: 1000,
            bot: bot.to_lowercase(),
            bot_token: bot_token.to_owned(),
            users: BTreeMap::new(),
            tokens: HashMap::new(),
            repos: BTreeMap::new(),
            comments: BTreeMap::new(),
            review_comments: BTreeMap::new(),
            reactions: Vec::new(),
            requests: Vec::new(),
            faults: Vec::new(),
            holds: Vec::new(),
            graphql: Vec::new(),
            receiver: None,
            outgoing: Vec::new(),
            deliveries: Vec::new(),
            // GitHub shows deleted accounts as `ghost`; records never point at unknown users,
            // but rendering must not fail if one did.
            ghost: UserRec {
                login: "ghost".to_owned(),
                id: 10_137,
                kind: AccountKind::User,
            },
        };
        state.add_account(bot, AccountKind::User);
        state
            .tokens
            .insert(bot_token.to_owned(), bot.to_lowercase());
        state
    }

    /// A fresh id; one sequence for every kind of object keeps ids unique across kinds.
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Registers an account unless it exists; returns its lowercased login.
    pub fn add_account(&mut self, login: &str, kind: AccountKind) -> String {
        let key = login.to_lowercase();
        if !self.users.contains_key(&key) {
            let id = self.next_id();
            self.users.insert(
                key.clone(),
                UserRec {
                    login: login.to_owned(),
                    id,
                    kind,
                },
            );
        }
        key
    }

    pub fn user(&self, login: &str) -> &UserRec {
        self.users.get(&login.to_lowercase()).unwrap_or(&self.ghost)
    }

    pub fn login_for_token(&self, token: &str) -> Option<String> {
        self.tokens.get(token).cloned()
    }

    pub fn repo_key(owner: &str, name: &str) -> String {
        format!("{}/{}", owner.to_lowercase(), name.to_lowercase())
    }

    pub fn repo(&self, key: &str) -> Option<&RepoRec> {
        self.repos.get(key)
    }

    pub fn repo_mut(&mut self, key: &str) -> Option<&mut RepoRec> {
        self.repos.get_mut(key)
    }

    /// The caller's role; repositories are public, so every account can read them.
    pub fn permission(&self, key: &str, login: &str) -> Option<Permission> {
        let repo = self.repos.get(key)?;
        let login = login.to_lowercase();
        if repo.owner.eq_ignore_ascii_case(&login) {
            return Some(Permission::Admin);
        }
        Some(
            repo.collaborators
                .get(&login)
                .copied()
                .unwrap_or(Permission::Read),
        )
    }

    /// Returns the canonical name of the repository's label `name`, creating it if needed.
    pub fn ensure_label(&mut self, key: &str, name: &str) -> String {
        let id = self.next_id();
        let Some(repo) = self.repos.get_mut(key) else {
            return name.to_owned();
        };
        let palette = [
            "d73a4a", "a2eeef", "7057ff", "0075ca", "cfd3d7", "e4e669", "008672",
        ];
        let color = palette[name.len() % palette.len()].to_owned();
        repo.labels
            .entry(name.to_lowercase())
            .or_insert_with(|| LabelRec {
                id,
                name: name.to_owned(),
                color,
            })
            .name
            .clone()
    }

    pub fn issue(&self, key: &str, number: u64) -> Option<&IssueRec> {
        self.repos.get(key)?.issues.get(&number)
    }

    pub fn issue_mut(&mut self, key: &str, number: u64) -> Option<&mut IssueRec> {
        self.repos.get_mut(key)?.issues.get_mut(&number)
    }

    /// How many conversation comments an issue or pull request has.
    pub fn comment_count(&self, key: &str, number: u64) -> usize {
        self.comments
            .values()
            .filter(|c| c.repo == key && c.number == number)
            .count()
    }

    /// Adds a conversation comment and bumps the issue's `updated_at`; `None` if the issue
    /// does not exist.
    pub fn add_comment(&mut self, key: &str, number: u64, author: &str, body: &str) -> Option<u64> {
        self.add_comment_at(key, number, author, body, now())
    }

    /// As [`add_comment`](Self::add_comment), dated `at`.
    pub fn add_comment_at(
        &mut self,
        key: &str,
        number: u64,
        author: &str,
        body: &str,
        at: DateTime<Utc>,
    ) -> Option<u64> {
        self.issue(key, number)?;
        let id = self.next_id();
        self.comments.insert(
            id,
            CommentRec {
                id,
                repo: key.to_owned(),
                number,
                author: author.to_lowercase(),
                body: body.to_owned(),
                created_at: at,
                updated_at: at,
            },
        );
        if let Some(issue) = self.issue_mut(key, number) {
            issue.updated_at = at;
        }
        let is_pull = self.issue(key, number).is_some_and(|i| i.pull.is_some());
        let mut issue = json!({ "number": number });
        if is_pull {
            issue["pull_request"] = json!({});
        }
        self.hook(
            "issue_comment",
            key,
            json!({
                "action": "created",
                "issue": issue,
                "comment": { "id": id, "body": body, "user": { "login": author } },
                "sender": { "login": author },
            }),
        );
        Some(id)
    }

    /// Whether `subject` exists in repository `key`.
    pub fn subject_exists(&self, key: &str, subject: Subject) -> bool {
        match subject {
            Subject::IssueComment(id) => self.comments.get(&id).is_some_and(|c| c.repo == key),
            Subject::ReviewComment(id) => {
                self.review_comments.get(&id).is_some_and(|c| c.repo == key)
            }
        }
    }

    /// Adds a reaction unless the user already reacted with that content. Returns the
    /// reaction and whether it is new.
    pub fn react(&mut self, subject: Subject, user: &str, content: &str) -> (ReactionRec, bool) {
        let user = user.to_lowercase();
        if let Some(existing) = self
            .reactions
            .iter()
            .find(|r| r.subject == subject && r.user == user && r.content == content)
        {
            return (existing.clone(), false);
        }
        let reaction = ReactionRec {
            id: self.next_id(),
            subject,
            user,
            content: content.to_owned(),
            created_at: now(),
        };
        self.reactions.push(reaction.clone());
        (reaction, true)
    }

    /// Closes an issue (or pull request) as completed.
    pub fn close_issue(&mut self, key: &str, number: u64, by: &str, reason: Option<&str>) {
        if let Some(issue) = self.issue_mut(key, number)
            && issue.state == IssueState::Open
        {
            let at = now();
            issue.state = IssueState::Closed;
            issue.state_reason = reason.map(str::to_owned);
            issue.closed_at = Some(at);
            issue.closed_by = Some(by.to_lowercase());
            issue.updated_at = at;
            if let Some(head) = issue.pull.as_ref().map(|p| p.head_ref.clone()) {
                let payload = json!({
                    "action": "closed",
                    "pull_request": { "number": number, "merged": false, "head": { "ref": head } },
                });
                self.hook("pull_request", key, payload);
            }
        }
    }
}

impl State {
    /// Replaces the cached branch tips of a repository with `tips` (read from the bare
    /// repository) and moves the head SHA of its open pull requests along.
    pub fn set_tips(&mut self, key: &str, tips: BTreeMap<String, String>) {
        let Some(repo) = self.repos.get_mut(key) else {
            return;
        };
        let mut moved = Vec::new();
        for issue in repo.issues.values_mut() {
            if issue.state == IssueState::Open
                && let Some(pull) = issue.pull.as_mut()
                && let Some(sha) = tips.get(&pull.head_ref)
                && pull.head_sha != *sha
            {
                pull.head_sha.clone_from(sha);
                moved.push(sha.clone());
            }
        }
        repo.branches = tips;
        for sha in moved {
            self.ci_started(key, &sha);
        }
    }
}

/// The reactions GitHub accepts.
pub(crate) const REACTIONS: [&str; 8] = [
    "+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes",
];
