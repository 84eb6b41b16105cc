//! What a task writes on GitHub and how it reads people's replies there: issue titles and
//! bodies, the questions, plan and summary comments, branch names, and the parsing of answers
//! and plan approvals from comments. Pure functions, so the wording is tested without GitHub.

use mainloop_store::TaskQuestion;

/// Hidden marker that finds a task's issue again (`find_or_create_issue`).
pub fn issue_marker(task_id: &str) -> String {
    format!("<!-- mainloop:task:{task_id} -->")
}

/// Hidden marker of one comment a task writes, so a retried write updates instead of
/// duplicating.
pub fn comment_marker(task_id: &str, key: &str) -> String {
    format!("<!-- mainloop:task:{task_id}:{key} -->")
}

/// An issue title from a task title: one line, no filler, at most 70 characters cut at a word.
pub fn issue_title(title: &str) -> String {
    let line = title.lines().next().unwrap_or("").trim();
    let lower = line.to_lowercase();
    let mut text = line;
    for filler in [
        "please ",
        "can you ",
        "could you ",
        "i want to ",
        "i need to ",
        "help me ",
        "i'd like to ",
        "let's ",
        "we should ",
        "we need to ",
    ] {
        if lower.starts_with(filler) {
            text = &line[filler.len()..];
            break;
        }
    }
    let mut chars = text.chars();
    let mut title: String = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => "Task".to_string(),
    };
    if title.chars().count() > 70 {
        let cut: String = title.chars().take(70).collect();
        let cut = match cut.rfind(' ') {
            Some(space) if space > 35 => cut[..space].to_string(),
            _ => cut,
        };
        title = format!("{}…", cut.trim_end_matches(['.', ',', ';', ':', ' ']));
    }
    title
}

/// The issue body: the request, the answers so far, the plan once there is one, and the
/// status. Rewritten as the task moves on.
pub fn issue_body(
    task_id: &str,
    description: &str,
    answers: &[(String, String)],
    plan: Option<&str>,
    status: &str,
) -> String {
    let mut body = String::new();
    body.push_str("## Request\n\n");
    for line in description.lines() {
        body.push_str(&format!("> {line}\n"));
    }
    if !answers.is_empty() {
        body.push_str("\n## Requirements\n\n");
        for (question, answer) in answers {
            body.push_str(&format!("- **{question}** {answer}\n"));
        }
    }
    if let Some(plan) = plan {
        body.push_str(&format!("\n## Implementation plan\n\n{plan}\n"));
    }
    body.push_str(&format!(
        "\n---\n_Status: {status}_ · _Managed by mainloop (task `{task_id}`)_\n{}",
        issue_marker(task_id)
    ));
    body
}

/// The comment that asks the plan job's questions.
pub fn questions_comment(questions: &[TaskQuestion], app_url: Option<&str>) -> String {
    let mut body = String::from(
        "## ❓ Questions\n\nI have some questions before I can write the implementation plan:\n",
    );
    for (i, q) in questions.iter().enumerate() {
        body.push_str(&format!(
            "\n### {}. {}\n\n**{}**\n",
            i + 1,
            q.header,
            q.question
        ));
        if q.multi_select {
            body.push_str("_(Select all that apply)_\n");
        }
        for (j, option) in q.options.iter().enumerate() {
            let letter = option_letter(j);
            match &option.description {
                Some(description) if !description.is_empty() => {
                    body.push_str(&format!(
                        "- **{letter})** {} — {description}\n",
                        option.label
                    ));
                }
                _ => {
                    body.push_str(&format!("- **{letter})** {}\n", option.label));
                }
            }
        }
    }
    body.push_str("\n---\n**To answer**, reply to this issue, one line per question:\n```\n");
    for i in 0..questions.len() {
        body.push_str(&format!("{}. A\n", i + 1));
    }
    body.push_str("```\nYou can also use an option's label, or your own words.");
    if let Some(url) = app_url {
        body.push_str(&format!(" Or answer in [mainloop]({url})."));
    }
    body.push('\n');
    body
}

/// The comment that shows a plan and how to approve it.
pub fn plan_comment(plan: &str, version: u32, app_url: Option<&str>) -> String {
    let heading = if version > 1 {
        format!("## 📋 Implementation plan (revision {version})")
    } else {
        "## 📋 Implementation plan".to_string()
    };
    let mut body = format!(
        "{heading}\n\n{plan}\n\n---\n**To approve:** react with 👍 on this comment, or reply \
         `lgtm`.\n**To request changes:** reply with what to change."
    );
    if let Some(url) = app_url {
        body.push_str(&format!(" You can also review it in [mainloop]({url})."));
    }
    body.push('\n');
    body
}

/// One row of the attempt ledger in the summary comment.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LedgerEntry {
    /// `implement`, `fix 1`, `feedback 1`…
    pub step: String,
    pub commit: String,
    /// What CI said of that commit: `passed`, `failed: test, lint`…
    pub ci: String,
}

/// The summary comment posted when the PR is marked ready.
pub fn summary_comment(
    title: &str,
    summary: &str,
    ledger: &[LedgerEntry],
    cost_usd: f64,
    tokens: i64,
) -> String {
    let mut body = format!("## ✅ Ready for review: {title}\n\n");
    if !summary.trim().is_empty() {
        body.push_str(&format!("{}\n\n", summary.trim()));
    }
    body.push_str("| step | commit | CI |\n|---|---|---|\n");
    for entry in ledger {
        let short: String = entry.commit.chars().take(7).collect();
        body.push_str(&format!("| {} | `{short}` | {} |\n", entry.step, entry.ci));
    }
    body.push_str(&format!(
        "\n_{tokens} tokens, ${cost_usd:.2} of model use. Review comments and \"changes \
         requested\" reviews are picked up automatically._\n"
    ));
    body
}

/// `feature/42-add-dark-mode`: a prefix, the issue number and at most 8 meaningful words.
pub fn branch_name(issue: Option<u64>, title: &str, task_id: &str) -> String {
    const STOP: [&str; 20] = [
        "the", "a", "an", "and", "or", "but", "in", "on", "at", "to", "for", "of", "with", "by",
        "is", "are", "was", "were", "please", "can",
    ];
    let lower = title.to_lowercase();
    let prefix = match lower.split_whitespace().next() {
        Some("fix" | "bugfix" | "bug") => "fix",
        Some("refactor") => "refactor",
        Some("docs" | "document") => "docs",
        Some("test" | "tests") => "test",
        Some("chore") => "chore",
        _ => "feature",
    };
    let words: Vec<String> = lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty() && !STOP.contains(w))
        .take(8)
        .map(str::to_string)
        .collect();
    let mut slug = words.join("-");
    if slug.len() > 50 {
        slug.truncate(50);
        if let Some(dash) = slug.rfind('-') {
            slug.truncate(dash);
        }
    }
    let id8: String = task_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    let mut number = issue.map_or(id8, |n| n.to_string());
    // `feature/` alone is no branch name git takes (task ids are never empty, but say so).
    if number.is_empty() {
        number.push_str("task");
    }
    if slug.is_empty() {
        format!("{prefix}/{number}")
    } else {
        format!("{prefix}/{number}-{slug}")
    }
}

fn option_letter(index: usize) -> char {
    char::from(b'A' + u8::try_from(index % 26).unwrap_or(0))
}

/// Whether a comment was written by mainloop itself (its comments carry a marker or start
/// with one of its headings), so it is never read as a human reply.
pub fn is_own_comment(body: &str) -> bool {
    let trimmed = body.trim_start();
    body.contains("<!-- mainloop:")
        || ["🤖", "## ❓", "## 📋", "## ✅", "❓", "📋"]
            .iter()
            .any(|prefix| trimmed.starts_with(prefix))
}

/// Answers found in a reply to the questions comment: `1. A`, `2: JWT tokens`, `#3 free text`,
/// or `Header: answer`. Letters and labels resolve to the option's label; other text is taken
/// as the user's own answer. Returns (question id, answer) for each question answered.
pub fn parse_answers(body: &str, questions: &[TaskQuestion]) -> Vec<(String, String)> {
    if is_own_comment(body) {
        return Vec::new();
    }
    let mut answers = Vec::new();
    for (i, question) in questions.iter().enumerate() {
        let number = (i + 1).to_string();
        let found = body.lines().find_map(|line| {
            let line = line.trim();
            let rest = line.strip_prefix('#').unwrap_or(line);
            let rest = rest.strip_prefix(number.as_str())?;
            let rest = rest
                .strip_prefix(['.', ':', ')'])
                .unwrap_or(rest)
                .trim_start();
            // `10. x` must not answer question 1.
            (!rest.is_empty() && !rest.starts_with(|c: char| c.is_ascii_digit()))
                .then(|| rest.to_string())
        });
        let found = found.or_else(|| {
            let header = question.header.to_lowercase();
            body.lines().find_map(|line| {
                let trimmed = line.trim();
                let lower = trimmed.to_lowercase();
                lower
                    .strip_prefix(&header)
                    .and_then(|rest| rest.trim_start().strip_prefix(':'))
                    .map(|_| trimmed[header.len()..].trim_start()[1..].trim().to_string())
            })
        });
        if let Some(text) = found.filter(|text| !text.is_empty()) {
            answers.push((question.id.clone(), resolve_answer(&text, question)));
        }
    }
    answers
}

fn resolve_answer(text: &str, question: &TaskQuestion) -> String {
    let parts: Vec<&str> = if question.multi_select {
        text.split([',', '&'])
            .flat_map(|p| p.split(" and "))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect()
    } else {
        vec![text.trim()]
    };
    let resolved: Vec<String> = parts
        .iter()
        .map(|part| {
            let lower = part.to_lowercase();
            if part.len() == 1
                && let Some(c) = part.chars().next().filter(char::is_ascii_alphabetic)
            {
                let index = usize::from(c.to_ascii_uppercase() as u8 - b'A');
                if let Some(option) = question.options.get(index) {
                    return option.label.clone();
                }
            }
            question
                .options
                .iter()
                .find(|o| o.label.to_lowercase() == lower)
                .or_else(|| {
                    question
                        .options
                        .iter()
                        .find(|o| o.label.to_lowercase().starts_with(&lower))
                })
                .map_or_else(|| part.to_string(), |o| o.label.clone())
        })
        .collect();
    resolved.join(", ")
}

/// What a reply to the plan says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanReply {
    Approve,
    Revise(String),
}

/// Reads a reply to the plan: an approval ("lgtm", "ship it", 👍…), or a change request (any
/// other text of more than 20 characters). Short chatter means nothing.
pub fn parse_plan_reply(body: &str) -> Option<PlanReply> {
    if is_own_comment(body) {
        return None;
    }
    let text = body.trim();
    let lower = text.to_lowercase();
    const APPROVALS: [&str; 9] = [
        "lgtm",
        "looks good",
        "approve",
        "/approve",
        "ship it",
        "go ahead",
        "proceed",
        "approved",
        "sounds good",
    ];
    let first_words = lower.trim_start_matches('/');
    if APPROVALS.iter().any(|a| {
        first_words.starts_with(a.trim_start_matches('/'))
            && first_words[a.trim_start_matches('/').len()..]
                .chars()
                .next()
                .is_none_or(|c| !c.is_alphanumeric())
    }) || ["👍", "✅", "🚀", "💯"].contains(&text)
    {
        return Some(PlanReply::Approve);
    }
    (text.chars().count() > 20).then(|| PlanReply::Revise(text.to_string()))
}

/// Reactions that approve a plan when left on its comment.
pub fn is_approving_reaction(content: &str) -> bool {
    matches!(content, "+1" | "rocket" | "heart" | "hooray")
}

#[cfg(test)]
mod tests {
    use super::*;
    use mainloop_store::TaskQuestionOption;

    fn question(id: &str, header: &str, options: &[&str], multi: bool) -> TaskQuestion {
        TaskQuestion {
            id: id.into(),
            header: header.into(),
            question: format!("Which {header}?"),
            options: options
                .iter()
                .map(|label| TaskQuestionOption {
                    label: (*label).into(),
                    description: None,
                })
                .collect(),
            multi_select: multi,
        }
    }

    #[test]
    fn titles_lose_filler_and_stay_short() {
        assert_eq!(issue_title("please add dark mode"), "Add dark mode");
        let long = "Add a dark mode toggle that follows the system theme and remembers the choice across sessions";
        let title = issue_title(long);
        assert!(title.chars().count() <= 71, "{title}");
        assert!(title.ends_with('…'), "{title}");
    }

    #[test]
    fn branch_names_are_readable() {
        assert_eq!(
            branch_name(Some(42), "Add dark mode to the settings page", "abc"),
            "feature/42-add-dark-mode-settings-page"
        );
        assert_eq!(
            branch_name(Some(7), "Fix the login crash", "abc"),
            "fix/7-fix-login-crash"
        );
        assert_eq!(branch_name(None, "!!!", "0193-abcd-ef"), "feature/0193abcd");
    }

    #[test]
    fn answers_by_number_letter_label_or_header() {
        let questions = vec![
            question("auth", "Auth", &["JWT tokens", "Sessions"], false),
            question("db", "Database", &["Postgres", "SQLite"], false),
            question("ui", "Themes", &["Dark", "Light", "Auto"], true),
        ];
        let answers = parse_answers("1. B\n2: postgres\n3) A, C", &questions);
        assert_eq!(
            answers,
            vec![
                ("auth".into(), "Sessions".into()),
                ("db".into(), "Postgres".into()),
                ("ui".into(), "Dark, Auto".into()),
            ]
        );
        let answers = parse_answers("Database: whatever is cheapest", &questions);
        assert_eq!(answers, vec![("db".into(), "whatever is cheapest".into())]);
        assert!(parse_answers("## ❓ Questions\n1. A", &questions).is_empty());
    }

    #[test]
    fn plan_replies() {
        assert_eq!(parse_plan_reply("LGTM!"), Some(PlanReply::Approve));
        assert_eq!(parse_plan_reply("ship it"), Some(PlanReply::Approve));
        assert_eq!(parse_plan_reply("👍"), Some(PlanReply::Approve));
        assert_eq!(parse_plan_reply("ok"), None);
        assert_eq!(
            parse_plan_reply("approvers list is wrong here"),
            Some(PlanReply::Revise("approvers list is wrong here".into()))
        );
        assert_eq!(
            parse_plan_reply("Please use CSS variables instead of a class"),
            Some(PlanReply::Revise(
                "Please use CSS variables instead of a class".into()
            ))
        );
        assert_eq!(parse_plan_reply("## 📋 Implementation plan\nlgtm"), None);
    }
}
