//! Renders the fake's records as GitHub's REST JSON: complete objects with the fields real
//! clients (octocrab's models in particular) require, `url`s under the fake's base URL and
//! `html_url`s under `https://github.com`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::model::{IssueState, Permission};
use super::state::{
    AccountKind, CommentRec, IssueRec, LabelRec, PullRec, ReactionRec, RepoRec, ReviewCommentRec,
    ReviewRec, State, Subject, UserRec,
};

pub(crate) const DOCS: &str = "https://docs.github.com/rest";

pub(crate) fn ts(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn opt_ts(at: Option<DateTime<Utc>>) -> Value {
    at.map_or(Value::Null, |at| Value::String(ts(at)))
}

pub(crate) fn user(base: &str, user: &UserRec) -> Value {
    let login = &user.login;
    let api = format!("{base}/users/{login}");
    let (kind, prefix) = match user.kind {
        AccountKind::User => ("User", "U_kgDO"),
        AccountKind::Organization => ("Organization", "O_kgDO"),
    };
    json!({
        "login": login,
        "id": user.id,
        "node_id": format!("{prefix}{:06X}", user.id),
        "avatar_url": format!("https://avatars.githubusercontent.com/u/{}?v=4", user.id),
        "gravatar_id": "",
        "url": api,
        "html_url": format!("https://github.com/{login}"),
        "followers_url": format!("{api}/followers"),
        "following_url": format!("{api}/following{{/other_user}}"),
        "gists_url": format!("{api}/gists{{/gist_id}}"),
        "starred_url": format!("{api}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{api}/subscriptions"),
        "organizations_url": format!("{api}/orgs"),
        "repos_url": format!("{api}/repos"),
        "events_url": format!("{api}/events{{/privacy}}"),
        "received_events_url": format!("{api}/received_events"),
        "type": kind,
        "user_view_type": "public",
        "site_admin": false,
    })
}

/// The user object of `login` as stored in a record.
pub(crate) fn user_of(base: &str, st: &State, login: &str) -> Value {
    user(base, st.user(login))
}

pub(crate) fn permissions(perm: Permission) -> Value {
    json!({
        "admin": perm >= Permission::Admin,
        "maintain": perm >= Permission::Maintain,
        "push": perm >= Permission::Write,
        "triage": perm >= Permission::Triage,
        "pull": true,
    })
}

fn association(st: &State, key: &str, login: &str) -> &'static str {
    let Some(repo) = st.repo(key) else {
        return "NONE";
    };
    if repo.owner.eq_ignore_ascii_case(login) {
        "OWNER"
    } else if repo.collaborators.contains_key(&login.to_lowercase()) {
        "COLLABORATOR"
    } else {
        "NONE"
    }
}

/// `{api}`-relative URL templates of the repository object.
const REPO_URLS: [(&str, &str); 35] = [
    ("archive_url", "/{archive_format}{/ref}"),
    ("assignees_url", "/assignees{/user}"),
    ("blobs_url", "/git/blobs{/sha}"),
    ("branches_url", "/branches{/branch}"),
    ("collaborators_url", "/collaborators{/collaborator}"),
    ("comments_url", "/comments{/number}"),
    ("commits_url", "/commits{/sha}"),
    ("compare_url", "/compare/{base}...{head}"),
    ("contents_url", "/contents/{+path}"),
    ("contributors_url", "/contributors"),
    ("deployments_url", "/deployments"),
    ("downloads_url", "/downloads"),
    ("events_url", "/events"),
    ("forks_url", "/forks"),
    ("git_commits_url", "/git/commits{/sha}"),
    ("git_refs_url", "/git/refs{/sha}"),
    ("git_tags_url", "/git/tags{/sha}"),
    ("issue_comment_url", "/issues/comments{/number}"),
    ("issue_events_url", "/issues/events{/number}"),
    ("issues_url", "/issues{/number}"),
    ("keys_url", "/keys{/key_id}"),
    ("labels_url", "/labels{/name}"),
    ("languages_url", "/languages"),
    ("merges_url", "/merges"),
    ("milestones_url", "/milestones{/number}"),
    (
        "notifications_url",
        "/notifications{?since,all,participating}",
    ),
    ("pulls_url", "/pulls{/number}"),
    ("releases_url", "/releases{/id}"),
    ("stargazers_url", "/stargazers"),
    ("statuses_url", "/statuses/{sha}"),
    ("subscribers_url", "/subscribers"),
    ("subscription_url", "/subscription"),
    ("tags_url", "/tags"),
    ("teams_url", "/teams"),
    ("trees_url", "/git/trees{/sha}"),
];

/// Repository URLs outside the API.
const SPECIAL_URLS: [(&str, &str); 2] = [
    ("git_url", "git://github.com/{full}.git"),
    ("ssh_url", "git@github.com:{full}.git"),
];

/// The full repository object; `perm` adds the caller's `permissions`.
pub(crate) fn repo(base: &str, st: &State, repo: &RepoRec, perm: Option<Permission>) -> Value {
    let full = repo.full_name();
    let api = format!("{base}/repos/{full}");
    let html = format!("https://github.com/{full}");
    let open_issues = repo
        .issues
        .values()
        .filter(|i| i.state == IssueState::Open)
        .count();
    let mut value = json!({
        "id": repo.id,
        "node_id": format!("R_kgDO{:06X}", repo.id),
        "name": repo.name,
        "full_name": full,
        "private": false,
        "owner": user_of(base, st, &repo.owner),
        "html_url": html,
        "description": format!("{} (served by mainloop's fake GitHub)", repo.name),
        "fork": false,
        "url": api,
        "clone_url": format!("{base}/git/{full}.git"),
        "mirror_url": null,
        "hooks_url": format!("{api}/hooks"),
        "svn_url": html,
        "homepage": null,
        "language": "Rust",
        "forks_count": 0,
        "stargazers_count": 0,
        "watchers_count": 0,
        "size": 1,
        "default_branch": repo.default_branch,
        "open_issues_count": open_issues,
        "is_template": false,
        "topics": [],
        "has_issues": true,
        "has_projects": true,
        "has_wiki": true,
        "has_pages": false,
        "has_downloads": true,
        "has_discussions": false,
        "archived": false,
        "disabled": false,
        "visibility": "public",
        "pushed_at": ts(repo.created_at),
        "created_at": ts(repo.created_at),
        "updated_at": ts(repo.created_at),
        "allow_forking": true,
        "web_commit_signoff_required": false,
        "forks": 0,
        "open_issues": open_issues,
        "watchers": 0,
    });
    if let Some(object) = value.as_object_mut() {
        for (field, suffix) in REPO_URLS {
            // The `{…}` are literal URI-template placeholders, as in GitHub's answers.
            object.insert(field.to_owned(), Value::String(format!("{api}{suffix}")));
        }
        for (field, value) in SPECIAL_URLS {
            object.insert(
                field.to_owned(),
                Value::String(value.replace("{full}", &full)),
            );
        }
        if let Some(perm) = perm {
            object.insert("permissions".to_owned(), permissions(perm));
        }
    }
    value
}

pub(crate) fn label(base: &str, repo: &RepoRec, label: &LabelRec) -> Value {
    json!({
        "id": label.id,
        "node_id": format!("LA_kwDO{:06X}", label.id),
        "url": format!("{base}/repos/{}/labels/{}", repo.full_name(), label.name.replace(' ', "%20")),
        "name": label.name,
        "color": label.color,
        "default": false,
        "description": null,
    })
}

fn labels(base: &str, repo: &RepoRec, names: &[String]) -> Vec<Value> {
    names
        .iter()
        .filter_map(|name| repo.labels.get(&name.to_lowercase()))
        .map(|l| label(base, repo, l))
        .collect()
}

/// The reaction summary embedded in comments and issues.
pub(crate) fn reaction_summary(st: &State, url: &str, subject: Option<Subject>) -> Value {
    let mut summary = json!({ "url": format!("{url}/reactions"), "total_count": 0 });
    let mut total = 0;
    for content in super::state::REACTIONS {
        let count = st
            .reactions
            .iter()
            .filter(|r| Some(r.subject) == subject && r.content == content)
            .count();
        total += count;
        summary[content] = json!(count);
    }
    summary["total_count"] = json!(total);
    summary
}

pub(crate) fn issue(base: &str, st: &State, repo: &RepoRec, issue: &IssueRec) -> Value {
    let full = repo.full_name();
    let key = State::repo_key(&repo.owner, &repo.name);
    let n = issue.number;
    let api = format!("{base}/repos/{full}/issues/{n}");
    let kind = if issue.pull.is_some() {
        "pull"
    } else {
        "issues"
    };
    let assignees: Vec<Value> = issue
        .assignees
        .iter()
        .map(|a| user_of(base, st, a))
        .collect();
    let mut value = json!({
        "id": issue.id,
        "node_id": format!("I_kwDO{:06X}", issue.id),
        "url": api,
        "repository_url": format!("{base}/repos/{full}"),
        "labels_url": format!("{api}/labels{{/name}}"),
        "comments_url": format!("{api}/comments"),
        "events_url": format!("{api}/events"),
        "timeline_url": format!("{api}/timeline"),
        "html_url": format!("https://github.com/{full}/{kind}/{n}"),
        "number": n,
        "state": issue.state.as_str(),
        "state_reason": issue.state_reason,
        "title": issue.title,
        "body": issue.body,
        "user": user_of(base, st, &issue.author),
        "labels": labels(base, repo, &issue.labels),
        "assignee": assignees.first().cloned(),
        "assignees": assignees,
        "milestone": null,
        "locked": false,
        "active_lock_reason": null,
        "comments": st.comment_count(&key, n),
        "closed_at": opt_ts(issue.closed_at),
        "closed_by": issue.closed_by.as_deref().map(|l| user_of(base, st, l)),
        "created_at": ts(issue.created_at),
        "updated_at": ts(issue.updated_at),
        "author_association": association(st, &key, &issue.author),
        "reactions": reaction_summary(st, &api, None),
        "performed_via_github_app": null,
    });
    if let Some(pull) = &issue.pull {
        value["pull_request"] = json!({
            "url": format!("{base}/repos/{full}/pulls/{n}"),
            "html_url": format!("https://github.com/{full}/pull/{n}"),
            "diff_url": format!("https://github.com/{full}/pull/{n}.diff"),
            "patch_url": format!("https://github.com/{full}/pull/{n}.patch"),
            "merged_at": opt_ts(pull.merged_at),
        });
        value["draft"] = json!(pull.draft);
    }
    value
}

pub(crate) fn comment(base: &str, st: &State, repo: &RepoRec, comment: &CommentRec) -> Value {
    let full = repo.full_name();
    let api = format!("{base}/repos/{full}/issues/comments/{}", comment.id);
    let kind = match st.issue(&comment.repo, comment.number) {
        Some(issue) if issue.pull.is_some() => "pull",
        _ => "issues",
    };
    json!({
        "id": comment.id,
        "node_id": format!("IC_kwDO{:06X}", comment.id),
        "url": api,
        "html_url": format!("https://github.com/{full}/{kind}/{}#issuecomment-{}", comment.number, comment.id),
        "issue_url": format!("{base}/repos/{full}/issues/{}", comment.number),
        "body": comment.body,
        "user": user_of(base, st, &comment.author),
        "created_at": ts(comment.created_at),
        "updated_at": ts(comment.updated_at),
        "author_association": association(st, &comment.repo, &comment.author),
        "reactions": reaction_summary(st, &api, Some(Subject::IssueComment(comment.id))),
        "performed_via_github_app": null,
    })
}

pub(crate) fn reaction(base: &str, st: &State, reaction: &ReactionRec) -> Value {
    json!({
        "id": reaction.id,
        "node_id": format!("REA_lADO{:06X}", reaction.id),
        "user": user_of(base, st, &reaction.user),
        "content": reaction.content,
        "created_at": ts(reaction.created_at),
    })
}

/// A branch end of a pull request (`head` or `base`).
fn pr_end(base: &str, st: &State, repo: &RepoRec, branch: &str, sha: &str) -> Value {
    json!({
        "label": format!("{}:{branch}", repo.owner),
        "ref": branch,
        "sha": sha,
        "user": user_of(base, st, &repo.owner),
        "repo": self::repo(base, st, repo, None),
    })
}

/// A pull request. `mergeable` is `Some` for the single-PR endpoint, which carries the
/// detail fields the list omits.
pub(crate) fn pull(
    base: &str,
    st: &State,
    repo: &RepoRec,
    issue: &IssueRec,
    pull: &PullRec,
    mergeable: Option<Option<bool>>,
) -> Value {
    let full = repo.full_name();
    let key = State::repo_key(&repo.owner, &repo.name);
    let n = issue.number;
    let api = format!("{base}/repos/{full}/pulls/{n}");
    let html = format!("https://github.com/{full}/pull/{n}");
    let issue_api = format!("{base}/repos/{full}/issues/{n}");
    let head_sha = &pull.head_sha;
    let base_sha = repo
        .branches
        .get(&pull.base_ref)
        .cloned()
        .unwrap_or_default();
    let links = json!({
        "self": { "href": api },
        "html": { "href": html },
        "issue": { "href": issue_api },
        "comments": { "href": format!("{issue_api}/comments") },
        "review_comments": { "href": format!("{api}/comments") },
        "review_comment": { "href": format!("{base}/repos/{full}/pulls/comments{{/number}}") },
        "commits": { "href": format!("{api}/commits") },
        "statuses": { "href": format!("{base}/repos/{full}/statuses/{head_sha}") },
    });
    let assignees: Vec<Value> = issue
        .assignees
        .iter()
        .map(|a| user_of(base, st, a))
        .collect();
    let mut value = json!({
        "url": api,
        "id": pull.id,
        "node_id": pull_node_id(pull.id),
        "html_url": html,
        "diff_url": format!("{html}.diff"),
        "patch_url": format!("{html}.patch"),
        "issue_url": issue_api,
        "commits_url": format!("{api}/commits"),
        "review_comments_url": format!("{api}/comments"),
        "review_comment_url": format!("{base}/repos/{full}/pulls/comments{{/number}}"),
        "comments_url": format!("{issue_api}/comments"),
        "statuses_url": format!("{base}/repos/{full}/statuses/{head_sha}"),
        "number": n,
        "state": issue.state.as_str(),
        "locked": false,
        "title": issue.title,
        "user": user_of(base, st, &issue.author),
        "body": issue.body,
        "labels": labels(base, repo, &issue.labels),
        "milestone": null,
        "active_lock_reason": null,
        "created_at": ts(issue.created_at),
        "updated_at": ts(issue.updated_at),
        "closed_at": opt_ts(issue.closed_at),
        "merged_at": opt_ts(pull.merged_at),
        "merge_commit_sha": pull.merge_commit_sha,
        "assignee": assignees.first().cloned(),
        "assignees": assignees,
        "requested_reviewers": [],
        "requested_teams": [],
        "head": pr_end(base, st, repo, &pull.head_ref, head_sha),
        "base": pr_end(base, st, repo, &pull.base_ref, &base_sha),
        "_links": links,
        "author_association": association(st, &key, &issue.author),
        "auto_merge": null,
        "draft": pull.draft,
    });
    if let Some(mergeable) = mergeable {
        let merged = pull.merged_at.is_some();
        let mergeable_state = match mergeable {
            _ if pull.draft => "draft",
            Some(true) => "clean",
            Some(false) => "dirty",
            None => "unknown",
        };
        let review_comments = st
            .review_comments
            .values()
            .filter(|c| c.repo == key && c.number == n)
            .count();
        let extra = json!({
            "merged": merged,
            "mergeable": mergeable,
            "rebaseable": mergeable,
            "mergeable_state": mergeable_state,
            "merged_by": pull.merged_by.as_deref().map(|l| user_of(base, st, l)),
            "comments": st.comment_count(&key, n),
            "review_comments": review_comments,
            "maintainer_can_modify": false,
        });
        if let (Some(object), Value::Object(extra)) = (value.as_object_mut(), extra) {
            object.extend(extra);
        }
    }
    value
}

pub(crate) fn pull_node_id(id: u64) -> String {
    format!("PR_kwDO{id:08X}")
}

pub(crate) fn review(base: &str, st: &State, repo: &RepoRec, n: u64, review: &ReviewRec) -> Value {
    let full = repo.full_name();
    let html = format!(
        "https://github.com/{full}/pull/{n}#pullrequestreview-{}",
        review.id
    );
    let pr_api = format!("{base}/repos/{full}/pulls/{n}");
    json!({
        "id": review.id,
        "node_id": format!("PRR_kwDO{:06X}", review.id),
        "user": user_of(base, st, &review.author),
        "body": review.body,
        "state": review.state.as_str(),
        "html_url": html,
        "pull_request_url": pr_api,
        "author_association": association(st, &State::repo_key(&repo.owner, &repo.name), &review.author),
        "_links": { "html": { "href": html }, "pull_request": { "href": pr_api } },
        "submitted_at": ts(review.submitted_at),
        "commit_id": review.commit_id,
    })
}

pub(crate) fn review_comment(
    base: &str,
    st: &State,
    repo: &RepoRec,
    c: &ReviewCommentRec,
) -> Value {
    let full = repo.full_name();
    let api = format!("{base}/repos/{full}/pulls/comments/{}", c.id);
    let html = format!(
        "https://github.com/{full}/pull/{}#discussion_r{}",
        c.number, c.id
    );
    let pr_api = format!("{base}/repos/{full}/pulls/{}", c.number);
    json!({
        "url": api,
        "pull_request_review_id": c.review_id,
        "id": c.id,
        "node_id": format!("PRRC_kwDO{:06X}", c.id),
        "diff_hunk": format!("@@ -{0},3 +{0},4 @@", c.line.saturating_sub(1).max(1)),
        "path": c.path,
        "position": c.line,
        "original_position": c.line,
        "commit_id": c.commit_id,
        "original_commit_id": c.commit_id,
        "user": user_of(base, st, &c.author),
        "body": c.body,
        "created_at": ts(c.created_at),
        "updated_at": ts(c.created_at),
        "html_url": html,
        "pull_request_url": pr_api,
        "author_association": association(st, &c.repo, &c.author),
        "_links": {
            "self": { "href": api },
            "html": { "href": html },
            "pull_request": { "href": pr_api },
        },
        "reactions": reaction_summary(st, &api, Some(Subject::ReviewComment(c.id))),
        "start_line": null,
        "original_start_line": null,
        "start_side": null,
        "line": c.line,
        "original_line": c.line,
        "side": "RIGHT",
        "subject_type": "line",
    })
}
