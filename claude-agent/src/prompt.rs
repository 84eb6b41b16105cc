//! The prompt for each mode: what the model is told about the task, its context and the rules
//! of the job it runs in.
//!
//! Lessons from the old Python agent: it gave answers as bare ids, lost the previous plan on
//! a revision, told the model to push and open PRs itself with `gh` (racing the orchestrator,
//! which opens the draft PR), and never said that nobody can answer mid-session. Here every
//! piece of context is quoted in full, the harness owns git pushes and the PR, and the
//! non-interactive rules are spelled out.

use mainloop_agent::protocol::{AgentSpec, Mode};

/// Facts about the clone the prompt needs beyond the spec.
#[derive(Debug, Clone, Default)]
pub struct Checkout {
    /// Commits already on the task branch beyond the base (a retried implement job).
    pub commits_ahead: u64,
}

pub fn build(spec: &AgentSpec, checkout: &Checkout) -> String {
    let mut out = String::new();
    task_section(&mut out, spec);
    match spec.mode {
        Mode::Plan => plan(&mut out, spec),
        Mode::Implement => implement(&mut out, spec, checkout),
        Mode::Fix => fix(&mut out, spec),
        Mode::Feedback => feedback(&mut out, spec),
    }
    out
}

fn task_section(out: &mut String, spec: &AgentSpec) {
    out.push_str(&format!("# Task: {}\n\n", spec.title.trim()));
    let description = spec.description.trim();
    if description.is_empty() {
        out.push_str("(No description beyond the title.)\n\n");
    } else {
        out.push_str(description);
        out.push_str("\n\n");
    }
    out.push_str(&format!(
        "Repository: {} (default branch `{}`), already cloned in your current working directory.\n",
        spec.repo, spec.base_branch
    ));
    if let Some(issue) = spec.issue_number {
        out.push_str(&format!("Plan issue: #{issue}.\n"));
    }
    if let Some(pr) = spec.pr_number {
        out.push_str(&format!("Pull request: #{pr}.\n"));
    }
    out.push('\n');
}

/// Quotes a block of context between rules, so text that itself contains headings cannot be
/// mistaken for our instructions.
fn quoted(out: &mut String, heading: &str, body: &str) {
    out.push_str(&format!("## {heading}\n\n---\n{}\n---\n\n", body.trim()));
}

fn answers(out: &mut String, spec: &AgentSpec) {
    if spec.answers.is_empty() {
        return;
    }
    out.push_str("## Answers to your earlier questions\n\n");
    for answer in &spec.answers {
        out.push_str(&format!(
            "- Q: {}\n  A: {}\n",
            answer.question.trim(),
            answer.answer.trim()
        ));
    }
    out.push_str("\nTake these answers as decided; do not ask them again.\n\n");
}

const NON_INTERACTIVE: &str = "This is a non-interactive job: nobody reads your messages while you work and nobody can \
answer a question during this session.";

fn plan(out: &mut String, spec: &AgentSpec) {
    answers(out, spec);
    let revision = spec.revision.as_deref().filter(|r| !r.trim().is_empty());
    if let Some(previous) = spec.plan.as_deref().filter(|p| !p.trim().is_empty()) {
        quoted(out, "Your previous plan", previous);
        if let Some(revision) = revision {
            quoted(out, "Changes the user asked for", revision);
            out.push_str(
                "Revise the previous plan to address these changes. Keep what the user did not \
                 question; change what they did.\n\n",
            );
        }
    }
    out.push_str(&format!(
        "## What to do\n\n\
         {NON_INTERACTIVE}\n\n\
         You are in plan mode: explore the repository read-only (read files, search, run \
         read-only commands) and write an implementation plan. Do not change the repository.\n\n\
         A person reviews the plan; then another session implements it with only the task, the \
         plan and the repository to go on, so make it self-contained. Write it in markdown with:\n\
         - **Summary**: the approach in a few sentences;\n\
         - **Files to modify** and **Files to create**: each path and what changes there;\n\
         - **Considerations**: risks, edge cases, migrations, and the tests to add or update.\n\
         If there are genuinely different approaches, describe them as **Option A**, \
         **Option B**, … and recommend one.\n\n\
         When the plan is ready, write it to the plan file if you were given one, then call \
         ExitPlanMode with the complete plan in its `plan` argument, and end your turn.\n\n\
         Only if you cannot plan without a decision that is the user's to make (not something the \
         code can tell you), call AskUserQuestion once with all your questions (at most 4, each \
         with 2 to 4 options) and end your turn: the questions reach the user after this session, \
         and you will be run again with their answers.\n"
    ));
}

const HARNESS_RULES: &str = "Rules of this job:\n\
- Do NOT push, do NOT open or edit pull requests, and do NOT run `gh`. When you finish, the \
harness commits whatever you left in the working tree and pushes the branch; the pull request \
is handled for you.\n\
- Stay on the current branch. You may commit as you go or leave your changes uncommitted: both \
are fine. Do not rewrite commits that are already on the branch (no rebase, amend or reset).\n\
- Make focused changes: only what this step needs, in the style of the surrounding code. No \
unrelated refactoring, reformatting or renaming.\n\
- Where the project has tests, add or update them, and run the relevant build, tests and \
linters to check your work when you can.\n";

fn closing(out: &mut String, what: &str) {
    out.push_str(&format!(
        "{NON_INTERACTIVE} Where something is unclear, make the most reasonable choice and say \
         so in your summary.\n\n\
         {HARNESS_RULES}\n\
         End with a short summary (a few sentences, no headings) of {what}: it becomes the commit \
         message body and is shown on the task.\n"
    ));
}

fn branch_name(spec: &AgentSpec) -> &str {
    spec.branch.as_deref().unwrap_or_default()
}

fn implement(out: &mut String, spec: &AgentSpec, checkout: &Checkout) {
    quoted(
        out,
        "Approved plan",
        spec.plan.as_deref().unwrap_or_default(),
    );
    answers(out, spec);
    out.push_str("## What to do\n\n");
    if checkout.commits_ahead > 0 {
        out.push_str(&format!(
            "You are on branch `{}`, which already has {} commit(s) from an earlier attempt at \
             this step. Review them first (`git log --stat {}..HEAD`) and continue from there \
             instead of starting over.\n\n",
            branch_name(spec),
            checkout.commits_ahead,
            spec.base_branch
        ));
    } else {
        out.push_str(&format!(
            "You are on branch `{}`, freshly created from `{}`.\n\n",
            branch_name(spec),
            spec.base_branch
        ));
    }
    out.push_str(
        "Implement the approved plan. If you have to deviate from it, do so and explain why in \
         your summary.\n\n",
    );
    closing(out, "what you changed and why");
}

fn fix(out: &mut String, spec: &AgentSpec) {
    quoted(
        out,
        "Failed CI checks",
        spec.ci_failures.as_deref().unwrap_or_default(),
    );
    if let Some(plan) = spec.plan.as_deref().filter(|p| !p.trim().is_empty()) {
        quoted(out, "The approved plan (for context)", plan);
    }
    out.push_str(&format!(
        "## What to do\n\n\
         You are on branch `{}`, the task's branch, whose CI checks failed as shown above. Fix \
         these failures at their root cause: find out why each check fails (reproduce it locally \
         when you can), then fix the code, tests, types, lint or build. Fix only these failures. \
         Do not disable, skip or weaken tests or checks to make them pass.\n\n",
        branch_name(spec)
    ));
    closing(out, "what was failing and how you fixed it");
}

fn feedback(out: &mut String, spec: &AgentSpec) {
    quoted(
        out,
        "Review feedback to address",
        spec.review_feedback.as_deref().unwrap_or_default(),
    );
    if let Some(plan) = spec.plan.as_deref().filter(|p| !p.trim().is_empty()) {
        quoted(out, "The approved plan (for context)", plan);
    }
    out.push_str(&format!(
        "## What to do\n\n\
         You are on branch `{}`, the task's branch. Address every point of the review above: \
         change the code where the reviewer asks for it. Where you disagree, or a comment needs \
         no change, leave the code and say why in your summary.\n\n",
        branch_name(spec)
    ));
    closing(out, "how you addressed each point");
}

#[cfg(test)]
mod tests {
    use super::*;
    use mainloop_agent::protocol::Answer;

    fn spec(mode: Mode) -> AgentSpec {
        AgentSpec {
            task_id: "t1".into(),
            mode,
            repo: "acme/widgets".into(),
            clone_url: "file:///tmp/widgets.git".into(),
            base_branch: "main".into(),
            branch: Some("mainloop/t1".into()),
            title: "Add dark mode".into(),
            description: "Users want a dark theme.".into(),
            issue_number: Some(12),
            pr_number: Some(34),
            plan: Some("PREVIOUS-PLAN-TEXT".into()),
            answers: vec![Answer {
                question_id: "theme-store".into(),
                question: "Where should the theme be stored?".into(),
                answer: "In local storage".into(),
            }],
            revision: Some("Use CSS variables".into()),
            ci_failures: Some("clippy: unused import".into()),
            review_feedback: Some("Rename `foo` to `bar`".into()),
            model: "claude-sonnet-4-5".into(),
            git_author_name: "mainloop".into(),
            git_author_email: "bot@example.com".into(),
        }
    }

    #[test]
    fn a_plan_revision_quotes_the_task_answers_previous_plan_and_change() {
        let prompt = build(&spec(Mode::Plan), &Checkout::default());
        for needle in [
            "# Task: Add dark mode",
            "Users want a dark theme.",
            "acme/widgets",
            "Q: Where should the theme be stored?",
            "A: In local storage",
            "PREVIOUS-PLAN-TEXT",
            "Use CSS variables",
            "ExitPlanMode",
            "AskUserQuestion",
            "non-interactive",
        ] {
            assert!(prompt.contains(needle), "missing {needle:?} in\n{prompt}");
        }
        assert!(
            !prompt.contains("theme-store"),
            "answer ids are not for the model"
        );
    }

    #[test]
    fn work_modes_leave_pushing_and_prs_to_the_harness() {
        for mode in [Mode::Implement, Mode::Fix, Mode::Feedback] {
            let prompt = build(&spec(mode), &Checkout::default());
            assert!(prompt.contains("Do NOT push"), "{mode:?}");
            assert!(prompt.contains("do NOT run `gh`"), "{mode:?}");
            assert!(prompt.contains("mainloop/t1"), "{mode:?}");
            assert!(!prompt.contains("Closes #"), "{mode:?}");
        }
        let implement = build(&spec(Mode::Implement), &Checkout::default());
        assert!(implement.contains("PREVIOUS-PLAN-TEXT"));
        assert!(implement.contains("freshly created from `main`"));
        let resumed = build(&spec(Mode::Implement), &Checkout { commits_ahead: 2 });
        assert!(resumed.contains("already has 2 commit(s)"));
        assert!(build(&spec(Mode::Fix), &Checkout::default()).contains("clippy: unused import"));
        assert!(build(&spec(Mode::Feedback), &Checkout::default()).contains("Rename `foo`"));
    }
}
