//! Read-only snapshots of the fake's state for tests: [`GitHubView`] turns the internal
//! records into the plain structs of [`super::model`]. Repositories are named `"owner/name"`,
//! case-insensitively; unknown repositories or numbers give empty results, not errors.

use super::model::{Comment, GraphqlCall, Issue, Pull, Reaction, Review, ReviewComment};
use super::state::{IssueRec, RepoRec, State, Subject};

/// The fake's state as one consistent snapshot, seen under its lock; what
/// [`super::FakeGitHub::wait_until`] predicates and [`super::FakeGitHub::view`] closures get.
pub struct GitHubView<'a> {
    st: &'a State,
}

fn key(repo: &str) -> String {
    repo.trim().trim_matches('/').to_lowercase()
}

fn display(st: &State, login: &str) -> String {
    st.user(login).login.clone()
}

impl<'a> GitHubView<'a> {
    pub(crate) fn new(st: &'a State) -> Self {
        Self { st }
    }

    /// The webhook deliveries posted so far, in order.
    pub fn webhook_deliveries(&self) -> &'a [super::Delivery] {
        &self.st.deliveries
    }

    fn repo(&self, repo: &str) -> Option<&'a RepoRec> {
        self.st.repo(&key(repo))
    }

    fn to_issue(&self, repo: &str, issue: &IssueRec) -> Issue {
        Issue {
            number: issue.number,
            title: issue.title.clone(),
            body: issue.body.clone(),
            author: display(self.st, &issue.author),
            state: issue.state,
            state_reason: issue.state_reason.clone(),
            labels: issue.labels.clone(),
            assignees: issue
                .assignees
                .iter()
                .map(|a| display(self.st, a))
                .collect(),
            is_pull_request: issue.pull.is_some(),
            comments: self.st.comment_count(&key(repo), issue.number),
            created_at: issue.created_at,
            updated_at: issue.updated_at,
            closed_at: issue.closed_at,
        }
    }

    /// Every issue and pull request, by number.
    pub fn issues(&self, repo: &str) -> Vec<Issue> {
        self.repo(repo)
            .map(|r| r.issues.values().map(|i| self.to_issue(repo, i)).collect())
            .unwrap_or_default()
    }

    pub fn issue(&self, repo: &str, number: u64) -> Option<Issue> {
        let issue = self.repo(repo)?.issues.get(&number)?;
        Some(self.to_issue(repo, issue))
    }

    /// The conversation comments of an issue or pull request, oldest first.
    pub fn comments(&self, repo: &str, number: u64) -> Vec<Comment> {
        let key = key(repo);
        self.st
            .comments
            .values()
            .filter(|c| c.repo == key && c.number == number)
            .map(|c| Comment {
                id: c.id,
                number: c.number,
                author: display(self.st, &c.author),
                body: c.body.clone(),
                created_at: c.created_at,
                updated_at: c.updated_at,
            })
            .collect()
    }

    fn to_pull(&self, repo: &RepoRec, issue: &IssueRec) -> Option<Pull> {
        let pull = issue.pull.as_ref()?;
        let head_sha = repo.branches.get(&pull.head_ref).cloned();
        // A closed pull request keeps the head it had, even if the branch moved or went.
        let head_sha = match issue.state {
            super::model::IssueState::Open => head_sha,
            super::model::IssueState::Closed => Some(pull.head_sha.clone()),
        };
        Some(Pull {
            number: issue.number,
            node_id: super::json::pull_node_id(pull.id),
            title: issue.title.clone(),
            body: issue.body.clone(),
            author: display(self.st, &issue.author),
            state: issue.state,
            draft: pull.draft,
            merged: pull.merged_at.is_some(),
            merged_at: pull.merged_at,
            merge_commit_sha: pull.merge_commit_sha.clone(),
            head_ref: pull.head_ref.clone(),
            base_ref: pull.base_ref.clone(),
            head_sha,
            html_url: format!(
                "https://github.com/{}/pull/{}",
                repo.full_name(),
                issue.number
            ),
        })
    }

    /// Every pull request, by number.
    pub fn pulls(&self, repo: &str) -> Vec<Pull> {
        self.repo(repo)
            .map(|r| {
                r.issues
                    .values()
                    .filter_map(|i| self.to_pull(r, i))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn pull(&self, repo: &str, number: u64) -> Option<Pull> {
        let r = self.repo(repo)?;
        self.to_pull(r, r.issues.get(&number)?)
    }

    pub fn reviews(&self, repo: &str, number: u64) -> Vec<Review> {
        let Some(pull) = self
            .repo(repo)
            .and_then(|r| r.issues.get(&number)?.pull.as_ref())
        else {
            return Vec::new();
        };
        pull.reviews
            .iter()
            .map(|r| Review {
                id: r.id,
                author: display(self.st, &r.author),
                state: r.state,
                body: r.body.clone(),
                commit_id: r.commit_id.clone(),
                submitted_at: r.submitted_at,
            })
            .collect()
    }

    pub fn review_comments(&self, repo: &str, number: u64) -> Vec<ReviewComment> {
        let key = key(repo);
        self.st
            .review_comments
            .values()
            .filter(|c| c.repo == key && c.number == number)
            .map(|c| ReviewComment {
                id: c.id,
                review_id: c.review_id,
                author: display(self.st, &c.author),
                body: c.body.clone(),
                path: c.path.clone(),
                line: c.line,
                commit_id: c.commit_id.clone(),
                created_at: c.created_at,
            })
            .collect()
    }

    /// Reactions on an issue comment or a review comment (ids are unique across both).
    pub fn reactions(&self, repo: &str, comment_id: u64) -> Vec<Reaction> {
        let key = key(repo);
        if !self
            .st
            .subject_exists(&key, Subject::IssueComment(comment_id))
            && !self
                .st
                .subject_exists(&key, Subject::ReviewComment(comment_id))
        {
            return Vec::new();
        }
        self.st
            .reactions
            .iter()
            .filter(|r| {
                matches!(r.subject, Subject::IssueComment(id) | Subject::ReviewComment(id) if id == comment_id)
            })
            .map(|r| Reaction {
                id: r.id,
                user: display(self.st, &r.user),
                content: r.content.clone(),
                created_at: r.created_at,
            })
            .collect()
    }

    /// The branch's tip as of the last push the fake served or git work it did itself.
    pub fn branch_head(&self, repo: &str, branch: &str) -> Option<String> {
        self.repo(repo)?.branches.get(branch).cloned()
    }

    /// `(method, path, status)` of every request answered so far, oldest first.
    pub fn requests(&self) -> &'a [(String, String, u16)] {
        &self.st.requests
    }

    pub fn graphql_calls(&self) -> &'a [GraphqlCall] {
        &self.st.graphql
    }
}
