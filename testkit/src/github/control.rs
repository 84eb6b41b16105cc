//! The test-facing control API that changes the fake as users would (repositories, issues,
//! comments, reactions, reviews, merges) and the inspection shortcuts over [`GitHubView`].
//! Methods that touch git are async; the rest are plain calls.

use anyhow::{Context as _, bail, ensure};
use serde_json::json;

use super::model::{Comment, Issue, IssueState, Permission, Pull, Reaction, Review, ReviewState};
use super::state::{
    AccountKind, IssueRec, REACTIONS, RepoRec, ReviewCommentRec, ReviewRec, State, Subject, now,
};
use super::{FakeGitHub, GitHubView, git};

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn key(repo: &str) -> String {
    repo.trim().trim_matches('/').to_lowercase()
}

/// Issue numbers a text closes with GitHub's keywords (`Closes #3`, `fixes: #4`, …).
pub(crate) fn closing_refs(text: &str) -> Vec<u64> {
    const KEYWORDS: [&str; 9] = [
        "close", "closes", "closed", "fix", "fixes", "fixed", "resolve", "resolves", "resolved",
    ];
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut numbers = Vec::new();
    for pair in words.windows(2) {
        let keyword = pair[0].trim_end_matches(':').to_lowercase();
        let reference = pair[1].trim_end_matches(|c: char| !c.is_ascii_digit());
        if KEYWORDS.contains(&keyword.as_str())
            && let Some(Ok(n)) = reference.strip_prefix('#').map(str::parse::<u64>)
            && !numbers.contains(&n)
        {
            numbers.push(n);
        }
    }
    numbers
}

const README: &str = "# {name}\n\nA tiny project served by mainloop's fake GitHub.\n";
const CARGO_TOML: &str = "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n";
const LIB_RS: &str = "/// Adds two numbers.\npub fn add(a: i64, b: i64) -> i64 {\n    a + b\n}\n\n\
#[cfg(test)]\nmod tests {\n    #[test]\n    fn adds() {\n        assert_eq!(super::add(2, 2), 4);\n    }\n}\n";

impl FakeGitHub {
    /// Creates the public repository `owner/name` with one commit on `main`: a README and a
    /// tiny Rust crate. The bot is an admin on it; `owner` becomes an organization unless a
    /// user of that login exists.
    ///
    /// # Errors
    /// If the name is invalid, the repository exists, or git fails.
    pub async fn create_repo(&self, owner: &str, name: &str) -> anyhow::Result<()> {
        let crate_name = name.to_lowercase().replace(['.', '-'], "_");
        let readme = README.replace("{name}", name);
        let cargo = CARGO_TOML.replace("{name}", &crate_name);
        let files = [
            ("README.md", readme.as_str()),
            ("Cargo.toml", cargo.as_str()),
            ("src/lib.rs", LIB_RS),
            (".gitignore", "/target\n"),
        ];
        self.create_repo_with_files(owner, name, &files).await
    }

    /// Like [`create_repo`](Self::create_repo) with the given `(path, content)` files.
    ///
    /// # Errors
    /// If the name is invalid, the repository exists, or git fails.
    pub async fn create_repo_with_files(
        &self,
        owner: &str,
        name: &str,
        files: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        ensure!(
            valid_name(owner) && valid_name(name),
            "invalid repository name {owner}/{name}"
        );
        ensure!(
            !files.is_empty(),
            "a repository needs at least one file for its first commit"
        );
        let key = State::repo_key(owner, name);
        ensure!(
            self.shared().lock().repo(&key).is_none(),
            "repository {owner}/{name} exists"
        );
        git::init_repo(self.shared(), &key, files).await?;
        self.shared().mutate(|st| {
            let owner_key = st.add_account(owner, AccountKind::Organization);
            let owner = st.user(&owner_key).login.clone();
            let id = st.next_id();
            let mut collaborators = std::collections::BTreeMap::new();
            collaborators.insert(st.bot.clone(), Permission::Admin);
            st.repos.insert(
                key.clone(),
                RepoRec {
                    owner,
                    name: name.to_owned(),
                    id,
                    created_at: now(),
                    default_branch: "main".to_owned(),
                    collaborators,
                    labels: Default::default(),
                    issues: Default::default(),
                    next_number: 1,
                    ci: Default::default(),
                    ci_runs: Default::default(),
                    failed_shas: 0,
                    branches: Default::default(),
                },
            );
        });
        git::refresh_tips(self.shared(), &key).await?;
        Ok(())
    }

    fn require_user(st: &State, login: &str) -> anyhow::Result<String> {
        let key = login.to_lowercase();
        ensure!(
            st.users.contains_key(&key),
            "no user {login}: add_user first"
        );
        Ok(key)
    }

    /// Opens an issue as `login`; returns its number.
    ///
    /// # Errors
    /// If the user or repository does not exist.
    pub fn create_issue_as(
        &self,
        login: &str,
        repo: &str,
        title: &str,
        body: &str,
    ) -> anyhow::Result<u64> {
        self.create_issue_as_at(login, repo, title, body, now())
    }

    /// As [`create_issue_as`](Self::create_issue_as), opened at `at` (whole seconds, as
    /// GitHub's): e.g. issues from long before a task.
    ///
    /// # Errors
    /// If the user or repository does not exist.
    pub fn create_issue_as_at(
        &self,
        login: &str,
        repo: &str,
        title: &str,
        body: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<u64> {
        use chrono::SubsecRound;
        let at = at.trunc_subsecs(0);
        let key = key(repo);
        self.shared().mutate(|st| {
            let author = Self::require_user(st, login)?;
            let id = st.next_id();
            let repo_rec = st
                .repo_mut(&key)
                .with_context(|| format!("no repository {repo}"))?;
            let number = repo_rec.next_number;
            repo_rec.next_number += 1;
            repo_rec.issues.insert(
                number,
                IssueRec {
                    id,
                    number,
                    title: title.to_owned(),
                    body: Some(body.to_owned()),
                    author,
                    state: IssueState::Open,
                    state_reason: None,
                    labels: Vec::new(),
                    assignees: Vec::new(),
                    created_at: at,
                    updated_at: at,
                    closed_at: None,
                    closed_by: None,
                    pull: None,
                },
            );
            Ok(number)
        })
    }

    /// Comments on issue or pull request `number` as `login`; returns the comment id.
    ///
    /// # Errors
    /// If the user, repository or issue does not exist.
    pub fn comment_as(
        &self,
        login: &str,
        repo: &str,
        number: u64,
        body: &str,
    ) -> anyhow::Result<u64> {
        let key = key(repo);
        self.shared().mutate(|st| {
            let author = Self::require_user(st, login)?;
            st.add_comment(&key, number, &author, body)
                .with_context(|| format!("no issue {repo}#{number}"))
        })
    }

    /// As [`comment_as`](Self::comment_as), dated `at` (whole seconds, as GitHub's): e.g. a
    /// reply within the second of the comment it answers.
    ///
    /// # Errors
    /// If the user, repository or issue does not exist.
    pub fn comment_as_at(
        &self,
        login: &str,
        repo: &str,
        number: u64,
        body: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<u64> {
        use chrono::SubsecRound;
        let key = key(repo);
        self.shared().mutate(|st| {
            let author = Self::require_user(st, login)?;
            st.add_comment_at(&key, number, &author, body, at.trunc_subsecs(0))
                .with_context(|| format!("no issue {repo}#{number}"))
        })
    }

    /// Reacts as `login` on an issue comment or review comment; returns the reaction id (the
    /// existing one if the user already reacted so).
    ///
    /// # Errors
    /// If the user or comment does not exist or `content` is not a GitHub reaction.
    pub fn react_as(
        &self,
        login: &str,
        repo: &str,
        comment_id: u64,
        content: &str,
    ) -> anyhow::Result<u64> {
        ensure!(
            REACTIONS.contains(&content),
            "{content:?} is not a GitHub reaction"
        );
        let key = key(repo);
        self.shared().mutate(|st| {
            let user = Self::require_user(st, login)?;
            let subject = [
                Subject::IssueComment(comment_id),
                Subject::ReviewComment(comment_id),
            ]
            .into_iter()
            .find(|s| st.subject_exists(&key, *s))
            .with_context(|| format!("no comment {comment_id} in {repo}"))?;
            Ok(st.react(subject, &user, content).0.id)
        })
    }

    /// Submits a review as `login` on pull request `pr` at its current head, with inline
    /// comments `(path, line, body)`; returns the review id. Like GitHub, authors cannot
    /// approve or request changes on their own pull requests.
    ///
    /// # Errors
    /// If the user or pull request does not exist, or on a self-approval.
    pub async fn submit_review(
        &self,
        login: &str,
        repo: &str,
        pr: u64,
        state: ReviewState,
        body: &str,
        inline: Vec<(&str, u64, &str)>,
    ) -> anyhow::Result<u64> {
        let key = key(repo);
        git::refresh_tips(self.shared(), &key).await?;
        self.shared().mutate(|st| {
            let author = Self::require_user(st, login)?;
            let issue = st
                .issue(&key, pr)
                .with_context(|| format!("no pull request {repo}#{pr}"))?;
            let pull = issue
                .pull
                .as_ref()
                .with_context(|| format!("{repo}#{pr} is an issue"))?;
            if state != ReviewState::Commented && issue.author == author {
                bail!("{login} cannot approve or request changes on their own pull request");
            }
            let commit = pull.head_sha.clone();
            let review_id = st.next_id();
            let at = now();
            for (path, line, text) in inline {
                let id = st.next_id();
                st.review_comments.insert(
                    id,
                    ReviewCommentRec {
                        id,
                        repo: key.clone(),
                        number: pr,
                        review_id,
                        author: author.clone(),
                        body: text.to_owned(),
                        path: path.to_owned(),
                        line,
                        commit_id: commit.clone(),
                        created_at: at,
                    },
                );
            }
            let issue = st
                .issue_mut(&key, pr)
                .with_context(|| format!("no pull request {repo}#{pr}"))?;
            issue.updated_at = at;
            if let Some(pull) = issue.pull.as_mut() {
                pull.reviews.push(ReviewRec {
                    id: review_id,
                    author: author.clone(),
                    body: body.to_owned(),
                    state,
                    commit_id: Some(commit),
                    submitted_at: at,
                });
            }
            let submitted = json!({
                "action": "submitted",
                "pull_request": { "number": pr },
                "review": { "id": review_id, "body": body, "user": { "login": author } },
                "sender": { "login": author },
            });
            st.hook("pull_request_review", &key, submitted);
            Ok(review_id)
        })
    }

    /// Merges pull request `number` as the bot; see [`merge_pr_as`](Self::merge_pr_as).
    ///
    /// # Errors
    /// As `merge_pr_as`.
    pub async fn merge_pr(&self, repo: &str, number: u64) -> anyhow::Result<String> {
        let bot = self.bot_login();
        self.merge_pr_as(&bot, repo, number).await
    }

    /// Really merges the head into the base in the bare repository (a `--no-ff` merge commit,
    /// like the merge button), marks the pull request merged and closed, and closes the issues
    /// its body names with `Closes #N`/`Fixes #N`/`Resolves #N`. Returns the merge commit.
    ///
    /// # Errors
    /// If the pull request is not open, a branch is gone, or the merge conflicts.
    pub async fn merge_pr_as(
        &self,
        login: &str,
        repo: &str,
        number: u64,
    ) -> anyhow::Result<String> {
        let key = key(repo);
        let (base, head, message, body, merger) = {
            let st = self.shared().lock();
            let merger = Self::require_user(&st, login)?;
            let repo_rec = st
                .repo(&key)
                .with_context(|| format!("no repository {repo}"))?;
            let issue = repo_rec
                .issues
                .get(&number)
                .with_context(|| format!("no pull request {repo}#{number}"))?;
            let pull = issue
                .pull
                .as_ref()
                .with_context(|| format!("{repo}#{number} is an issue"))?;
            ensure!(
                issue.state == IssueState::Open,
                "{repo}#{number} is not open"
            );
            let message = format!(
                "Merge pull request #{number} from {}/{}\n\n{}",
                repo_rec.owner, pull.head_ref, issue.title
            );
            (
                pull.base_ref.clone(),
                pull.head_ref.clone(),
                message,
                issue.body.clone().unwrap_or_default(),
                merger,
            )
        };
        let (sha, head_sha) = git::merge(self.shared(), &key, &base, &head, &message).await?;
        self.shared().mutate(|st| {
            let at = now();
            if let Some(issue) = st.issue_mut(&key, number) {
                issue.state = IssueState::Closed;
                issue.closed_at = Some(at);
                issue.closed_by = Some(merger.clone());
                issue.updated_at = at;
                if let Some(pull) = issue.pull.as_mut() {
                    pull.merged_at = Some(at);
                    pull.merged_by = Some(merger.clone());
                    pull.merge_commit_sha = Some(sha.clone());
                    pull.head_sha = head_sha;
                }
                let merged = json!({
                    "action": "closed",
                    "pull_request": { "number": number, "merged": true, "head": { "ref": head } },
                    "sender": { "login": merger },
                });
                st.hook("pull_request", &key, merged);
            }
            for closed in closing_refs(&body) {
                let is_issue = st.issue(&key, closed).is_some_and(|i| i.pull.is_none());
                if is_issue {
                    st.close_issue(&key, closed, &merger, Some("completed"));
                }
            }
        });
        git::refresh_tips(self.shared(), &key).await?;
        Ok(sha)
    }

    /// From now on, posts a webhook delivery to `url` for what happens here (see the `hooks`
    /// module for which events), signed with `secret`, as a repository webhook would.
    pub fn deliver_webhooks_to(&self, url: &str, secret: &str) {
        let receiver = super::hooks::Receiver {
            url: url.to_owned(),
            secret: secret.to_owned(),
        };
        let first = self
            .shared()
            .mutate(|st| st.receiver.replace(receiver).is_none());
        if first {
            tokio::spawn(super::hooks::deliver(std::sync::Arc::clone(
                &self.handle.shared,
            )));
        }
    }

    /// Closes pull request `number` without merging, as the bot.
    ///
    /// # Errors
    /// If there is no such open pull request.
    pub fn close_pr(&self, repo: &str, number: u64) -> anyhow::Result<()> {
        let key = key(repo);
        self.shared().mutate(|st| {
            let issue = st
                .issue(&key, number)
                .with_context(|| format!("no pull request {repo}#{number}"))?;
            ensure!(issue.pull.is_some(), "{repo}#{number} is an issue");
            ensure!(
                issue.state == IssueState::Open,
                "{repo}#{number} is not open"
            );
            let bot = st.bot.clone();
            st.close_issue(&key, number, &bot, None);
            Ok(())
        })
    }

    /// `(sha, subject)` of the commits on `branch`, newest first, read from the bare repository.
    ///
    /// # Errors
    /// If the repository or branch does not exist.
    pub async fn commits(&self, repo: &str, branch: &str) -> anyhow::Result<Vec<(String, String)>> {
        let key = key(repo);
        ensure!(
            self.shared().lock().repo(&key).is_some(),
            "no repository {repo}"
        );
        git::commits(self.shared(), &key, branch).await
    }

    /// The branch's tip as of the last push served (pushes refresh it before they return).
    pub fn branch_head(&self, repo: &str, branch: &str) -> Option<String> {
        self.view(|v| v.branch_head(repo, branch))
    }

    pub fn issues(&self, repo: &str) -> Vec<Issue> {
        self.view(|v| v.issues(repo))
    }

    pub fn issue(&self, repo: &str, number: u64) -> Option<Issue> {
        self.view(|v| v.issue(repo, number))
    }

    pub fn comments(&self, repo: &str, number: u64) -> Vec<Comment> {
        self.view(|v| v.comments(repo, number))
    }

    pub fn pulls(&self, repo: &str) -> Vec<Pull> {
        self.view(|v| v.pulls(repo))
    }

    pub fn pull(&self, repo: &str, number: u64) -> Option<Pull> {
        self.view(|v| v.pull(repo, number))
    }

    pub fn reviews(&self, repo: &str, number: u64) -> Vec<Review> {
        self.view(|v| v.reviews(repo, number))
    }

    pub fn reactions(&self, repo: &str, comment_id: u64) -> Vec<Reaction> {
        self.view(|v: &GitHubView<'_>| v.reactions(repo, comment_id))
    }
}
