//! Hostile repository names, generated branch names and job paths, fuzzed through the
//! validators that guard git, the GitHub API and the file system: traversal (`..`, absolute
//! paths, `%2e%2e`, backslashes, NUL, lookalikes), option injection (`-oProxyCommand=…`,
//! `--upload-pack=…`), other hosts and overlong names are refused with a clear error; what
//! is accepted is provably harmless.

use std::path::{Component, Path};
use std::process::Command;

use mainloop_activities::jobs::local::{LocalRunner, LocalRunnerSettings};
use mainloop_activities::repo::parse_repo;
use mainloop_activities::task_text::branch_name;
use mainloop_agent::protocol::{AgentSpec, Mode};
use proptest::prelude::*;

fn hostile_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..".to_owned()),
        Just("../".to_owned()),
        Just("/".to_owned()),
        Just("%2e%2e".to_owned()),
        Just("%2f".to_owned()),
        Just("\\".to_owned()),
        Just("\0".to_owned()),
        Just("-".to_owned()),
        Just("--upload-pack=touch /tmp/x".to_owned()),
        Just("-oProxyCommand=touch /tmp/x".to_owned()),
        Just("https://evil.example/".to_owned()),
        Just("https://github.com/".to_owned()),
        Just("git@github.com:".to_owned()),
        Just("file:///".to_owned()),
        Just("ext::".to_owned()),
        Just(".git".to_owned()),
        Just("?".to_owned()),
        Just("#".to_owned()),
        Just(";".to_owned()),
        Just("$(id)".to_owned()),
        Just(" ".to_owned()),
        Just("\n".to_owned()),
        Just("\u{2215}".to_owned()), // division slash, a `/` lookalike
        Just("\u{ff0e}\u{ff0e}".to_owned()), // fullwidth full stops, a `..` lookalike
        Just("\u{0430}".to_owned()), // Cyrillic a
        "[a-z0-9]{1,8}",
    ]
}

fn hostile() -> impl Strategy<Value = String> {
    prop::collection::vec(hostile_piece(), 1..7).prop_map(|pieces| pieces.concat())
}

/// What an accepted repository must look like to be safe in a URL path, a git argument and
/// a directory name.
fn assert_harmless(input: &str) -> Result<(), TestCaseError> {
    let Ok(repo) = parse_repo(input) else {
        return Ok(());
    };
    let owner_ok = repo.owner.len() <= 39
        && !repo.owner.starts_with('-')
        && repo
            .owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let name_ok = repo.name.len() <= 100
        && !repo.name.starts_with(['-', '.'])
        && repo
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    prop_assert!(owner_ok && name_ok, "{input:?} gave {repo:?}");
    prop_assert!(!repo.name.contains(".."), "{input:?} gave {repo:?}");
    prop_assert_eq!(repo.full_name().matches('/').count(), 1);
    Ok(())
}

/// Whether real git takes `name` as a branch name.
fn git_accepts(name: &str) -> bool {
    Command::new("git")
        .args(["check-ref-format", "--branch", name])
        .output()
        .map(|output| output.status.success())
        .unwrap_or(false)
}

fn agent_spec(branch: &str) -> AgentSpec {
    AgentSpec {
        task_id: "t1".into(),
        mode: Mode::Implement,
        repo: "acme/web".into(),
        clone_url: "https://github.com/acme/web.git".into(),
        base_branch: "main".into(),
        branch: Some(branch.into()),
        title: "x".into(),
        description: "x".into(),
        issue_number: None,
        pr_number: None,
        plan: Some("1. x".into()),
        answers: Vec::new(),
        revision: None,
        ci_failures: None,
        review_feedback: None,
        model: "m".into(),
        git_author_name: "mainloop".into(),
        git_author_email: "bot@example.com".into(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn hostile_repo_names_are_refused_or_harmless(input in hostile()) {
        assert_harmless(&input)?;
    }

    #[test]
    fn arbitrary_repo_text_is_refused_or_harmless(input in "\\PC{0,60}") {
        assert_harmless(&input)?;
    }

    #[test]
    fn hostile_owner_or_name_in_a_plausible_shape_is_refused(
        good in "[a-z]{1,10}",
        bad in prop_oneof![
            Just("..".to_owned()),
            Just(".".to_owned()),
            "-[a-z=-]{0,20}",
            "[a-z]{1,5}[/\\\\%:;?# \\x00\\n\u{2215}\u{ff0e}][a-z]{1,5}",
            "[a-z]{101,120}",
            "[a-z]{1,5}\\.\\.[a-z]{1,5}",
        ],
    ) {
        for input in [format!("{good}/{bad}"), format!("{bad}/{good}"),
                      format!("https://github.com/{good}/{bad}")] {
            let error = parse_repo(&input);
            prop_assert!(error.is_err(), "{input:?} was accepted: {error:?}");
            let message = error.unwrap_err().to_string();
            prop_assert!(message.contains("is not a GitHub repository"), "{message}");
        }
    }

    /// Whatever the title (the model writes it) and task id, the branch mainloop makes is
    /// one git takes, the agent's spec takes, and that cannot read as an option.
    #[test]
    fn generated_branch_names_are_valid_for_git_and_the_agent(
        title in "\\PC{0,80}",
        task_id in "[a-zA-Z0-9-]{0,40}",
        issue in prop::option::of(1u64..1_000_000),
    ) {
        let branch = branch_name(issue, &title, &task_id);
        prop_assert!(!branch.starts_with('-'), "{branch:?}");
        prop_assert!(branch.len() <= 100, "{branch:?}");
        prop_assert!(git_accepts(&branch), "git refuses {branch:?} (title {title:?})");
        prop_assert_eq!(agent_spec(&branch).validate(), Ok(()));
    }

    /// A job's directory is always two plain components under the work directory.
    #[test]
    fn job_directories_never_leave_the_work_dir(task_id in hostile(), name in hostile()) {
        let runner = LocalRunner::new(LocalRunnerSettings::new("/bin/true", "/work-root"));
        if let Ok(dir) = runner.job_dir(&task_id, &name) {
            let rest = dir.strip_prefix("/work-root").expect("under the work dir");
            let components: Vec<Component> = rest.components().collect();
            prop_assert_eq!(components.len(), 2, "{:?}", dir);
            prop_assert!(components.iter().all(|c| matches!(c, Component::Normal(_))), "{dir:?}");
            prop_assert!(!task_id.contains(['/', '\\', '\0']), "{task_id:?}");
        }
    }
}

#[test]
fn the_classic_attacks_are_refused_with_a_clear_error() {
    let runner = LocalRunner::new(LocalRunnerSettings::new("/bin/true", "/work-root"));
    for input in [
        "../../etc/passwd",
        "/etc/passwd",
        "acme/..",
        "acme/.",
        "acme/a..b",
        "acme/%2e%2e",
        "acme\\web",
        "acme/web\0",
        "acme/--upload-pack=touch /tmp/pwned",
        "-oProxyCommand=touch /tmp/pwned/web",
        "--upload-pack=x/web",
        "git@github.com:acme/web.git",
        "ssh://github.com/acme/web",
        "file:///srv/git/acme/web",
        "ext::sh -c touch% /tmp/pwned",
        "https://evil.example/acme/web",
        "https://github.com.evil.example/acme/web",
        "https://user@github.com/acme/web",
        "acme/web/../../other",
        "acme\u{2215}web",
        "acme/w\u{0435}b",
        &format!("acme/{}", "a".repeat(101)),
        &format!("{}/web", "a".repeat(40)),
    ] {
        let error = parse_repo(input).expect_err(input);
        assert!(
            error.to_string().contains("is not a GitHub repository"),
            "{input}: {error}"
        );
    }
    for task_id in ["..", ".", "../x", "/abs", "a/b", "a\\b", "a\0b", ""] {
        let error = runner.job_dir(task_id, "plan").expect_err(task_id);
        assert!(
            error.to_string().contains("not a safe directory name"),
            "{error}"
        );
    }
    assert!(runner.job_dir("t1", "../plan").is_err());
    assert!(
        runner
            .job_dir("t1", "plan")
            .is_ok_and(|dir| dir == Path::new("/work-root/t1/plan"))
    );
}
