//! Pull requests over REST (create, list, get, edit, reviews, inline review comments) and
//! the one GraphQL mutation mainloop uses, `markPullRequestReadyForReview`.
//!
//! Pull requests are issues with a [`PullRec`] attached and share the issue numbers. Their
//! `head.sha` is read from the bare repository on every request, so it follows pushes.

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::git;
use super::json;
use super::model::{GraphqlCall, IssueState};
use super::rest::{
    ApiError, Ctx, Reply, created, error, forbidden, invalid, invalid_custom, not_found, ok,
    paginate,
};
use super::state::{IssueRec, PullRec, State, now};

pub(crate) fn internal(error: &anyhow::Error) -> ApiError {
    tracing::warn!(error = format!("{error:#}"), "the fake GitHub failed");
    self::error(StatusCode::INTERNAL_SERVER_ERROR, "Server Error")
}

/// Re-reads the repository's branch tips so rendered pull requests carry live SHAs.
async fn refresh(ctx: &Ctx, key: &str) -> Result<(), ApiError> {
    git::refresh_tips(&ctx.shared, key)
        .await
        .map(|_| ())
        .map_err(|e| internal(&e))
}

fn render(
    ctx: &Ctx,
    st: &State,
    key: &str,
    issue: &IssueRec,
    mergeable: Option<Option<bool>>,
) -> Value {
    match (st.repo(key), &issue.pull) {
        (Some(repo), Some(pull)) => json::pull(ctx.base(), st, repo, issue, pull, mergeable),
        _ => Value::Null,
    }
}

pub(crate) async fn create(ctx: &Ctx, o: &str, r: &str) -> Reply {
    let (key, _) = ctx.repo(o, r)?;
    let body = ctx.json_body()?;
    let title = body["title"].as_str().filter(|t| !t.trim().is_empty());
    let title = title.ok_or_else(|| invalid("PullRequest", "title", "missing_field"))?;
    let head = body["head"]
        .as_str()
        .ok_or_else(|| invalid("PullRequest", "head", "missing_field"))?;
    let base = body["base"]
        .as_str()
        .ok_or_else(|| invalid("PullRequest", "base", "missing_field"))?;
    let owner = ctx
        .shared
        .lock()
        .repo(&key)
        .map(|r| r.owner.clone())
        .ok_or_else(not_found)?;
    let head_ref = match head.split_once(':') {
        // Pull requests from forks are not modelled.
        Some((head_owner, _)) if !head_owner.eq_ignore_ascii_case(&owner) => {
            return Err(invalid("PullRequest", "head", "invalid"));
        }
        Some((_, branch)) => branch,
        None => head,
    };
    let tips = git::refresh_tips(&ctx.shared, &key)
        .await
        .map_err(|e| internal(&e))?;
    let head_sha = tips
        .get(head_ref)
        .ok_or_else(|| invalid("PullRequest", "head", "invalid"))?;
    if !tips.contains_key(base) {
        return Err(invalid("PullRequest", "base", "invalid"));
    }
    let ahead = git::ahead(&ctx.shared, &key, base, head_ref)
        .await
        .map_err(|e| internal(&e))?;
    if ahead == 0 {
        return Err(invalid_custom(
            "PullRequest",
            &format!("No commits between {base} and {head_ref}"),
        ));
    }
    let value = ctx.shared.mutate(|st| {
        let repo = st.repo(&key).ok_or_else(not_found)?;
        let exists = repo.issues.values().any(|i| {
            i.state == IssueState::Open && i.pull.as_ref().is_some_and(|p| p.head_ref == head_ref)
        });
        if exists {
            let message = format!("A pull request already exists for {owner}:{head_ref}.");
            return Err(invalid_custom("PullRequest", &message));
        }
        let (id, pull_id, at) = (st.next_id(), st.next_id(), now());
        let repo = st.repo_mut(&key).ok_or_else(not_found)?;
        let number = repo.next_number;
        repo.next_number += 1;
        let issue = IssueRec {
            id,
            number,
            title: title.to_owned(),
            body: body["body"].as_str().map(str::to_owned),
            author: ctx.login.clone(),
            state: IssueState::Open,
            state_reason: None,
            labels: Vec::new(),
            assignees: Vec::new(),
            created_at: at,
            updated_at: at,
            closed_at: None,
            closed_by: None,
            pull: Some(PullRec {
                id: pull_id,
                head_ref: head_ref.to_owned(),
                base_ref: base.to_owned(),
                head_sha: head_sha.clone(),
                draft: body["draft"].as_bool().unwrap_or(false),
                merged_at: None,
                merged_by: None,
                merge_commit_sha: None,
                reviews: Vec::new(),
            }),
        };
        repo.issues.insert(number, issue.clone());
        let opened = json!({
            "action": "opened",
            "pull_request": { "number": number, "head": { "ref": head_ref } },
        });
        st.hook("pull_request", &key, opened);
        st.ci_started(&key, head_sha);
        // GitHub computes mergeability in the background: a new pull request says "unknown".
        Ok(render(ctx, st, &key, &issue, Some(None)))
    })?;
    created(&value)
}

pub(crate) async fn list(ctx: &Ctx, o: &str, r: &str) -> Reply {
    let (key, _) = ctx.repo(o, r)?;
    let state = ctx.q("state").unwrap_or("open");
    if !matches!(state, "open" | "closed" | "all") {
        return Err(invalid("PullRequest", "state", "invalid"));
    }
    refresh(ctx, &key).await?;
    let head = ctx
        .q("head")
        .map(|h| h.rsplit(':').next().unwrap_or(h).to_owned());
    let base = ctx.q("base");
    let st = ctx.shared.lock();
    let repo = st.repo(&key).ok_or_else(not_found)?;
    let mut found: Vec<&IssueRec> = repo
        .issues
        .values()
        .filter(|i| state == "all" || i.state.as_str() == state)
        .filter(|i| {
            i.pull.as_ref().is_some_and(|p| {
                head.as_ref().is_none_or(|h| p.head_ref == *h)
                    && base.is_none_or(|b| p.base_ref == b)
            })
        })
        .collect();
    if ctx.q("sort") == Some("updated") {
        found.sort_by_key(|i| (i.updated_at, i.number));
    }
    if ctx.q("direction") != Some("asc") {
        found.reverse();
    }
    let items = found
        .into_iter()
        .map(|i| render(ctx, &st, &key, i, None))
        .collect();
    paginate(ctx, items)
}

/// The pull request `n` of `key`, or 404 (also for plain issues).
fn pull_of<'s>(st: &'s State, key: &str, n: u64) -> Result<(&'s IssueRec, &'s PullRec), ApiError> {
    let issue = st.issue(key, n).ok_or_else(not_found)?;
    issue
        .pull
        .as_ref()
        .map(|p| (issue, p))
        .ok_or_else(not_found)
}

pub(crate) async fn get(ctx: &Ctx, o: &str, r: &str, n: u64) -> Reply {
    let (key, _) = ctx.repo(o, r)?;
    refresh(ctx, &key).await?;
    let check = {
        let st = ctx.shared.lock();
        let (issue, pull) = pull_of(&st, &key, n)?;
        let branches = st.repo(&key).map(|r| &r.branches);
        let both = branches
            .is_some_and(|b| b.contains_key(&pull.head_ref) && b.contains_key(&pull.base_ref));
        (issue.state == IssueState::Open && both)
            .then(|| (pull.base_ref.clone(), pull.head_ref.clone()))
    };
    let mergeable = match check {
        Some((base, head)) => Some(
            git::mergeable(&ctx.shared, &key, &base, &head)
                .await
                .map_err(|e| internal(&e))?,
        ),
        None => None,
    };
    let st = ctx.shared.lock();
    let (issue, _) = pull_of(&st, &key, n)?;
    ok(&render(ctx, &st, &key, issue, Some(mergeable)))
}

pub(crate) async fn edit(ctx: &Ctx, o: &str, r: &str, n: u64) -> Reply {
    let (key, perm) = ctx.repo(o, r)?;
    let body = ctx.json_body()?;
    refresh(ctx, &key).await?;
    let value = ctx.shared.mutate(|st| {
        let (issue, pull) = pull_of(st, &key, n)?;
        if !perm.can_push() && issue.author != ctx.login {
            return Err(forbidden(
                "Must have push access to edit pull requests of others.",
            ));
        }
        if body["state"].as_str() == Some("open") && issue.state == IssueState::Closed {
            let repo = st.repo(&key).ok_or_else(not_found)?;
            if !repo.branches.contains_key(&pull.head_ref) {
                return Err(invalid_custom(
                    "PullRequest",
                    "The head branch no longer exists",
                ));
            }
            let head_ref = pull.head_ref.clone();
            let other_open = repo.issues.values().any(|i| {
                i.number != n
                    && i.state == IssueState::Open
                    && i.pull.as_ref().is_some_and(|p| p.head_ref == head_ref)
            });
            if other_open {
                let message = format!(
                    "A pull request already exists for {}:{head_ref}.",
                    repo.owner
                );
                return Err(invalid_custom("PullRequest", &message));
            }
        }
        let issue = st.issue_mut(&key, n).ok_or_else(not_found)?;
        super::issues::edit_issue(issue, &body, None, perm.can_push(), &ctx.login)?;
        let issue = issue.clone();
        Ok(render(ctx, st, &key, &issue, Some(None)))
    })?;
    ok(&value)
}

pub(crate) fn reviews(ctx: &Ctx, o: &str, r: &str, n: u64) -> Reply {
    let (key, _) = ctx.repo(o, r)?;
    let st = ctx.shared.lock();
    let (_, pull) = pull_of(&st, &key, n)?;
    let repo = st.repo(&key).ok_or_else(not_found)?;
    let items = pull
        .reviews
        .iter()
        .map(|rv| json::review(ctx.base(), &st, repo, n, rv))
        .collect();
    paginate(ctx, items)
}

pub(crate) fn review_comments(ctx: &Ctx, o: &str, r: &str, n: u64) -> Reply {
    let (key, _) = ctx.repo(o, r)?;
    let st = ctx.shared.lock();
    pull_of(&st, &key, n)?;
    let repo = st.repo(&key).ok_or_else(not_found)?;
    let items = st
        .review_comments
        .values()
        .filter(|c| c.repo == key && c.number == n)
        .map(|c| json::review_comment(ctx.base(), &st, repo, c))
        .collect();
    paginate(ctx, items)
}

// ---------------------------------------------------------------------------------------------
// GraphQL
// ---------------------------------------------------------------------------------------------

pub(crate) async fn graphql(ctx: &Ctx) -> Reply {
    let Ok(body) = serde_json::from_slice::<Value>(&ctx.body) else {
        return Err(error(StatusCode::BAD_REQUEST, "Problems parsing JSON"));
    };
    let query = body["query"].as_str().unwrap_or("").to_owned();
    let variables = body["variables"].clone();
    let result = mark_ready(ctx, &query, &variables);
    let login = ctx.shared.lock().user(&ctx.login).login.clone();
    let call = GraphqlCall {
        login: Some(login),
        query,
        variables,
        ok: result.is_ok(),
    };
    ctx.shared.mutate(|st| st.graphql.push(call));
    match result {
        Ok(data) => ok(&json!({ "data": data })),
        Err((kind, message)) => ok(&json!({
            "data": null,
            "errors": [{
                "type": kind,
                "path": ["markPullRequestReadyForReview"],
                "locations": [{ "line": 1, "column": 1 }],
                "message": message,
            }],
        })),
    }
}

/// The value of argument `name` in `query`: a string literal, or a `$variable`.
fn argument(query: &str, variables: &Value, name: &str) -> Option<Value> {
    let at = query.find(name)? + name.len();
    let rest = query[at..].trim_start().strip_prefix(':')?.trim_start();
    if let Some(literal) = rest.strip_prefix('"') {
        return literal
            .split('"')
            .next()
            .map(|s| Value::String(s.to_owned()));
    }
    let var = rest.strip_prefix('$')?;
    let end = var
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(var.len());
    variables.get(&var[..end]).cloned()
}

fn mark_ready(ctx: &Ctx, query: &str, variables: &Value) -> Result<Value, (&'static str, String)> {
    let Some(at) = query.find("markPullRequestReadyForReview") else {
        return Err((
            "NOT_FOUND",
            "The fake GitHub answers only markPullRequestReadyForReview".to_owned(),
        ));
    };
    // Arguments are read inside the call, after the operation's variable declarations.
    let call = &query[at..];
    // Either `input: {pullRequestId: …}` or `input: $input` with the id inside the variable.
    let id = argument(call, variables, "pullRequestId")
        .or_else(|| argument(call, variables, "input").map(|input| input["pullRequestId"].clone()))
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let not_found = || {
        (
            "NOT_FOUND",
            format!("Could not resolve to a node with the global id of '{id}'"),
        )
    };
    ctx.shared.mutate(|st| {
        let found = st.repos.iter().find_map(|(key, repo)| {
            repo.issues
                .values()
                .find(|i| {
                    i.pull
                        .as_ref()
                        .is_some_and(|p| json::pull_node_id(p.id) == id)
                })
                .map(|i| (key.clone(), i.number))
        });
        let (key, number) = found.ok_or_else(not_found)?;
        if !st
            .permission(&key, &ctx.login)
            .is_some_and(|p| p.can_push())
        {
            let message = format!(
                "{} does not have permission to update this pull request.",
                ctx.login
            );
            return Err(("FORBIDDEN", message));
        }
        let issue = st.issue_mut(&key, number).ok_or_else(not_found)?;
        if let Some(pull) = issue.pull.as_mut() {
            pull.draft = false;
        }
        issue.updated_at = now();
        Ok(json!({
            "markPullRequestReadyForReview": {
                "pullRequest": { "id": id, "number": number, "isDraft": false },
            },
        }))
    })
}
