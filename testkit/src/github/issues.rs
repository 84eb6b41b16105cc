//! The issues side of the REST API: issues (which include pull requests, as on GitHub),
//! their labels, conversation comments, and reactions on issue and review comments.
//!
//! Permissions follow GitHub for a public repository: anyone signed in may open issues,
//! comment and react; labels and assignees need push access (and are silently dropped at
//! creation without it); editing someone else's issue or comment needs push access.

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::json;
use super::model::IssueState;
use super::rest::{
    ApiError, Ctx, Reply, created, error, forbidden, invalid, no_content, not_found, ok, paginate,
    paginate_with,
};
use super::state::{IssueRec, REACTIONS, State, Subject, now};

pub(crate) fn issue_comment(id: &str) -> Result<Subject, ApiError> {
    id.parse()
        .map(Subject::IssueComment)
        .map_err(|_| not_found())
}

pub(crate) fn review_comment(id: &str) -> Result<Subject, ApiError> {
    id.parse()
        .map(Subject::ReviewComment)
        .map_err(|_| not_found())
}

/// Label or assignee names from `["a", "b"]` or `[{"name": "a"}]`.
fn names(value: &Value) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|v| v.as_str().or_else(|| v["name"].as_str()).map(str::to_owned))
        .collect()
}

fn since(ctx: &Ctx) -> Result<Option<DateTime<Utc>>, ApiError> {
    match ctx.q("since") {
        None | Some("") => Ok(None),
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| invalid("Issue", "since", "invalid")),
    }
}

fn render(ctx: &Ctx, st: &State, key: &str, issue: &IssueRec) -> Value {
    st.repo(key)
        .map(|repo| json::issue(ctx.base(), st, repo, issue))
        .unwrap_or(Value::Null)
}

pub(crate) fn list(ctx: &Ctx, o: &str, r: &str) -> Reply {
    let (key, _) = ctx.repo(o, r)?;
    let state = ctx.q("state").unwrap_or("open");
    if !matches!(state, "open" | "closed" | "all") {
        return Err(invalid("Issue", "state", "invalid"));
    }
    let labels: Vec<String> = ctx
        .q("labels")
        .unwrap_or("")
        .split(',')
        .map(|l| l.trim().to_lowercase())
        .filter(|l| !l.is_empty())
        .collect();
    let creator = ctx.q("creator").map(str::to_lowercase);
    let since = since(ctx)?;
    let st = ctx.shared.lock();
    let repo = st.repo(&key).ok_or_else(not_found)?;
    let mut found: Vec<&IssueRec> = repo
        .issues
        .values()
        .filter(|i| state == "all" || i.state.as_str() == state)
        .filter(|i| {
            labels
                .iter()
                .all(|l| i.labels.iter().any(|have| have.to_lowercase() == *l))
        })
        .filter(|i| creator.as_ref().is_none_or(|c| i.author == *c))
        .filter(|i| since.is_none_or(|s| i.updated_at >= s))
        .collect();
    match ctx.q("sort").unwrap_or("created") {
        "updated" => found.sort_by_key(|i| (i.updated_at, i.number)),
        "comments" => found.sort_by_key(|i| (st.comment_count(&key, i.number), i.number)),
        _ => found.sort_by_key(|i| i.number),
    }
    if ctx.q("direction") != Some("asc") {
        found.reverse();
    }
    paginate_with(ctx, found, |i| render(ctx, &st, &key, i))
}

pub(crate) fn create(ctx: &Ctx, o: &str, r: &str) -> Reply {
    let (key, perm) = ctx.repo(o, r)?;
    let body = ctx.json_body()?;
    let title = body["title"].as_str().filter(|t| !t.trim().is_empty());
    let title = title.ok_or_else(|| invalid("Issue", "title", "missing_field"))?;
    let (labels, assignees) = if perm.can_push() {
        let mut assignees = names(&body["assignees"]).unwrap_or_default();
        assignees.extend(body["assignee"].as_str().map(str::to_owned));
        (names(&body["labels"]).unwrap_or_default(), assignees)
    } else {
        (Vec::new(), Vec::new())
    };
    let value = ctx.shared.mutate(|st| {
        if let Some(unknown) = assignees
            .iter()
            .find(|a| !st.users.contains_key(&a.to_lowercase()))
        {
            tracing::debug!(%unknown, "unknown assignee");
            return Err(invalid("Issue", "assignees", "invalid"));
        }
        let labels: Vec<String> = labels.iter().map(|l| st.ensure_label(&key, l)).collect();
        let id = st.next_id();
        let at = now();
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
            labels,
            assignees: assignees.iter().map(|a| a.to_lowercase()).collect(),
            created_at: at,
            updated_at: at,
            closed_at: None,
            closed_by: None,
            pull: None,
        };
        repo.issues.insert(number, issue.clone());
        Ok(render(ctx, st, &key, &issue))
    })?;
    created(&value)
}

pub(crate) fn get(ctx: &Ctx, o: &str, r: &str, n: u64) -> Reply {
    let (key, _) = ctx.repo(o, r)?;
    let st = ctx.shared.lock();
    let issue = st.issue(&key, n).ok_or_else(not_found)?;
    ok(&render(ctx, &st, &key, issue))
}

pub(crate) fn edit(ctx: &Ctx, o: &str, r: &str, n: u64) -> Reply {
    let (key, perm) = ctx.repo(o, r)?;
    let body = ctx.json_body()?;
    let value = ctx.shared.mutate(|st| {
        let issue = st.issue(&key, n).ok_or_else(not_found)?;
        if !perm.can_push() && issue.author != ctx.login {
            return Err(forbidden("Must have push access to edit issues of others."));
        }
        let labels = if perm.can_push() {
            names(&body["labels"])
        } else {
            None
        };
        let labels = labels.map(|ls| ls.iter().map(|l| st.ensure_label(&key, l)).collect());
        let issue = st.issue_mut(&key, n).ok_or_else(not_found)?;
        edit_issue(issue, &body, labels, perm.can_push(), &ctx.login)?;
        let issue = issue.clone();
        Ok(render(ctx, st, &key, &issue))
    })?;
    ok(&value)
}

/// Applies a PATCH body to an issue (also used for pull requests' shared fields).
pub(crate) fn edit_issue(
    issue: &mut IssueRec,
    body: &Value,
    labels: Option<Vec<String>>,
    can_push: bool,
    login: &str,
) -> Result<(), ApiError> {
    let title = match &body["title"] {
        Value::Null => None,
        Value::String(t) if !t.trim().is_empty() => Some(t.clone()),
        _ => return Err(invalid("Issue", "title", "invalid")),
    };
    let state = match body["state"].as_str() {
        None => None,
        Some("open") => Some(IssueState::Open),
        Some("closed") => Some(IssueState::Closed),
        Some(_) => return Err(invalid("Issue", "state", "invalid")),
    };
    let reason = match body["state_reason"].as_str() {
        None => None,
        Some(r @ ("completed" | "not_planned" | "reopened")) => Some(r.to_owned()),
        Some(_) => return Err(invalid("Issue", "state_reason", "invalid")),
    };
    let merged = issue.pull.as_ref().is_some_and(|p| p.merged_at.is_some());
    if merged && state == Some(IssueState::Open) {
        return Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "state cannot be changed. The pull request cannot be reopened.",
        ));
    }
    let at = now();
    if let Some(title) = title {
        issue.title = title;
    }
    if let Some(text) = body.get("body") {
        issue.body = text.as_str().map(str::to_owned);
    }
    match state {
        Some(IssueState::Closed) if issue.state == IssueState::Open => {
            issue.state = IssueState::Closed;
            issue.closed_at = Some(at);
            issue.closed_by = Some(login.to_owned());
            let default = issue.pull.is_none().then(|| "completed".to_owned());
            issue.state_reason = reason.or(default);
        }
        Some(IssueState::Open) if issue.state == IssueState::Closed => {
            issue.state = IssueState::Open;
            issue.closed_at = None;
            issue.closed_by = None;
            issue.state_reason = issue.pull.is_none().then(|| "reopened".to_owned());
        }
        _ => {}
    }
    if let Some(labels) = labels {
        issue.labels = labels;
    }
    if can_push && let Some(assignees) = names(&body["assignees"]) {
        issue.assignees = assignees.iter().map(|a| a.to_lowercase()).collect();
    }
    issue.updated_at = at;
    Ok(())
}

pub(crate) fn add_labels(ctx: &Ctx, o: &str, r: &str, n: u64) -> Reply {
    let (key, perm) = ctx.repo(o, r)?;
    if !perm.can_push() {
        return Err(forbidden("Must have push access to repository"));
    }
    let body = ctx.json_body()?;
    let wanted = names(&body).or_else(|| names(&body["labels"]));
    let wanted = wanted.ok_or_else(|| invalid("Label", "labels", "invalid"))?;
    let value = ctx.shared.mutate(|st| {
        st.issue(&key, n).ok_or_else(not_found)?;
        let wanted: Vec<String> = wanted.iter().map(|l| st.ensure_label(&key, l)).collect();
        let issue = st.issue_mut(&key, n).ok_or_else(not_found)?;
        for label in wanted {
            if !issue.labels.iter().any(|l| l.eq_ignore_ascii_case(&label)) {
                issue.labels.push(label);
            }
        }
        issue.updated_at = now();
        Ok(issue_labels(ctx, st, &key, n))
    })?;
    ok(&value)
}

pub(crate) fn remove_label(ctx: &Ctx, o: &str, r: &str, n: u64, name: &str) -> Reply {
    let (key, perm) = ctx.repo(o, r)?;
    if !perm.can_push() {
        return Err(forbidden("Must have push access to repository"));
    }
    let value = ctx.shared.mutate(|st| {
        let issue = st.issue_mut(&key, n).ok_or_else(not_found)?;
        let at = issue
            .labels
            .iter()
            .position(|l| l.eq_ignore_ascii_case(name));
        let at = at.ok_or_else(|| error(StatusCode::NOT_FOUND, "Label does not exist"))?;
        issue.labels.remove(at);
        issue.updated_at = now();
        Ok(issue_labels(ctx, st, &key, n))
    })?;
    ok(&value)
}

fn issue_labels(ctx: &Ctx, st: &State, key: &str, n: u64) -> Value {
    let (Some(repo), Some(issue)) = (st.repo(key), st.issue(key, n)) else {
        return Value::Array(Vec::new());
    };
    let labels = issue
        .labels
        .iter()
        .filter_map(|name| repo.labels.get(&name.to_lowercase()))
        .map(|l| json::label(ctx.base(), repo, l))
        .collect();
    Value::Array(labels)
}

pub(crate) fn list_comments(ctx: &Ctx, o: &str, r: &str, n: u64) -> Reply {
    let (key, _) = ctx.repo(o, r)?;
    let since = since(ctx)?;
    let st = ctx.shared.lock();
    let repo = st.repo(&key).ok_or_else(not_found)?;
    st.issue(&key, n).ok_or_else(not_found)?;
    let items = st
        .comments
        .values()
        .filter(|c| c.repo == key && c.number == n)
        .filter(|c| since.is_none_or(|s| c.updated_at >= s))
        .map(|c| json::comment(ctx.base(), &st, repo, c))
        .collect();
    paginate(ctx, items)
}

pub(crate) fn create_comment(ctx: &Ctx, o: &str, r: &str, n: u64) -> Reply {
    let (key, _) = ctx.repo(o, r)?;
    let body = ctx.json_body()?;
    let text = body["body"].as_str().filter(|b| !b.trim().is_empty());
    let text = text.ok_or_else(|| invalid("IssueComment", "body", "missing_field"))?;
    let value = ctx.shared.mutate(|st| {
        let id = st
            .add_comment(&key, n, &ctx.login, text)
            .ok_or_else(not_found)?;
        comment_json(ctx, st, &key, id)
    })?;
    created(&value)
}

fn comment_json(ctx: &Ctx, st: &State, key: &str, id: u64) -> Result<Value, ApiError> {
    let comment = st
        .comments
        .get(&id)
        .filter(|c| c.repo == key)
        .ok_or_else(not_found)?;
    let repo = st.repo(key).ok_or_else(not_found)?;
    Ok(json::comment(ctx.base(), st, repo, comment))
}

pub(crate) fn get_comment(ctx: &Ctx, o: &str, r: &str, id: u64) -> Reply {
    let (key, _) = ctx.repo(o, r)?;
    let st = ctx.shared.lock();
    ok(&comment_json(ctx, &st, &key, id)?)
}

/// Checks that the caller may change comment `id` of repository `key`.
fn may_change(ctx: &Ctx, st: &State, key: &str, id: u64, can_push: bool) -> Result<(), ApiError> {
    let comment = st
        .comments
        .get(&id)
        .filter(|c| c.repo == key)
        .ok_or_else(not_found)?;
    if can_push || comment.author == ctx.login {
        Ok(())
    } else {
        Err(forbidden(
            "Must have push access to edit comments of others.",
        ))
    }
}

pub(crate) fn edit_comment(ctx: &Ctx, o: &str, r: &str, id: u64) -> Reply {
    let (key, perm) = ctx.repo(o, r)?;
    let body = ctx.json_body()?;
    let text = body["body"].as_str().filter(|b| !b.trim().is_empty());
    let text = text.ok_or_else(|| invalid("IssueComment", "body", "missing_field"))?;
    let value = ctx.shared.mutate(|st| {
        may_change(ctx, st, &key, id, perm.can_push())?;
        if let Some(comment) = st.comments.get_mut(&id) {
            comment.body = text.to_owned();
            comment.updated_at = now();
        }
        comment_json(ctx, st, &key, id)
    })?;
    ok(&value)
}

pub(crate) fn delete_comment(ctx: &Ctx, o: &str, r: &str, id: u64) -> Reply {
    let (key, perm) = ctx.repo(o, r)?;
    ctx.shared.mutate(|st| {
        may_change(ctx, st, &key, id, perm.can_push())?;
        st.comments.remove(&id);
        st.reactions
            .retain(|r| r.subject != Subject::IssueComment(id));
        Ok(())
    })?;
    no_content()
}

pub(crate) fn list_reactions(ctx: &Ctx, o: &str, r: &str, subject: Subject) -> Reply {
    let (key, _) = ctx.repo(o, r)?;
    let content = ctx.q("content");
    let st = ctx.shared.lock();
    if !st.subject_exists(&key, subject) {
        return Err(not_found());
    }
    let items = st
        .reactions
        .iter()
        .filter(|r| r.subject == subject && content.is_none_or(|c| r.content == c))
        .map(|r| json::reaction(ctx.base(), &st, r))
        .collect();
    paginate(ctx, items)
}

pub(crate) fn add_reaction(ctx: &Ctx, o: &str, r: &str, subject: Subject) -> Reply {
    let (key, _) = ctx.repo(o, r)?;
    let body = ctx.json_body()?;
    let content = body["content"].as_str().filter(|c| REACTIONS.contains(c));
    let content = content.ok_or_else(|| invalid("Reaction", "content", "invalid"))?;
    let (value, new) = ctx.shared.mutate(|st| {
        if !st.subject_exists(&key, subject) {
            return Err(not_found());
        }
        let (reaction, new) = st.react(subject, &ctx.login, content);
        Ok((json::reaction(ctx.base(), st, &reaction), new))
    })?;
    if new { created(&value) } else { ok(&value) }
}
