//! Hostile branch names through the spec's validation, fuzzed: option injection, ref-format
//! violations, traversal, control characters, lookalikes and overlong names are refused with
//! a message naming the field, and every name that is accepted is one real git accepts as a
//! branch (`git check-ref-format --branch`) and cannot read as an option.

use std::process::Command;

use mainloop_agent::protocol::{AgentSpec, Mode};
use proptest::prelude::*;

fn spec(branch: &str) -> AgentSpec {
    AgentSpec {
        task_id: "t1".into(),
        mode: Mode::Fix,
        repo: "acme/widgets".into(),
        clone_url: "https://github.com/acme/widgets.git".into(),
        base_branch: "main".into(),
        branch: Some(branch.into()),
        title: "Add dark mode".into(),
        description: "Please".into(),
        issue_number: Some(7),
        pr_number: None,
        plan: Some("1. Do it".into()),
        answers: Vec::new(),
        revision: None,
        ci_failures: Some("test failed".into()),
        review_feedback: None,
        model: "claude-sonnet-4-5".into(),
        git_author_name: "mainloop".into(),
        git_author_email: "bot@example.com".into(),
    }
}

/// Whether real git takes `name` as a branch name.
fn git_accepts(name: &str) -> bool {
    Command::new("git")
        .args(["check-ref-format", "--branch", name])
        .output()
        .map(|output| output.status.success())
        .unwrap_or(false)
}

/// Pieces hostile names are made of.
fn hostile_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("-".to_owned()),
        Just("--upload-pack=touch /tmp/x".to_owned()),
        Just("-oProxyCommand=touch /tmp/x".to_owned()),
        Just("--exec=sh".to_owned()),
        Just("..".to_owned()),
        Just("../".to_owned()),
        Just("/".to_owned()),
        Just("//".to_owned()),
        Just("%2e%2e".to_owned()),
        Just("\\".to_owned()),
        Just("\0".to_owned()),
        Just("@{".to_owned()),
        Just("@".to_owned()),
        Just(".lock".to_owned()),
        Just(".".to_owned()),
        Just("~".to_owned()),
        Just("^".to_owned()),
        Just(":".to_owned()),
        Just("?".to_owned()),
        Just("*".to_owned()),
        Just("[".to_owned()),
        Just(" ".to_owned()),
        Just("\t".to_owned()),
        Just("\n".to_owned()),
        Just("\u{7f}".to_owned()),
        Just("\u{2024}\u{2024}".to_owned()), // one-dot leaders, a `..` lookalike
        Just("\u{ff0f}".to_owned()),         // fullwidth solidus
        Just("\u{202e}".to_owned()),         // right-to-left override
        "[a-z]{1,8}",
    ]
}

fn hostile_name() -> impl Strategy<Value = String> {
    prop::collection::vec(hostile_piece(), 1..6).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Whatever the name, the spec is either refused (naming the field) or the name is one
    /// git takes as a branch and that cannot be read as an option.
    #[test]
    fn accepted_branch_names_are_safe_for_git(name in hostile_name()) {
        match spec(&name).validate() {
            Ok(()) => {
                prop_assert!(!name.starts_with('-'), "{name:?} reads as an option");
                prop_assert!(git_accepts(&name), "git refuses {name:?}, the spec took it");
                prop_assert!(!name.contains(".."), "{name:?}");
            }
            Err(problems) => prop_assert!(problems.contains("`branch`"), "{problems}"),
        }
    }

    #[test]
    fn arbitrary_unicode_names_are_refused_or_safe(name in "\\PC{0,40}") {
        if spec(&name).validate().is_ok() {
            prop_assert!(!name.starts_with('-'));
            prop_assert!(git_accepts(&name), "git refuses {name:?}");
        }
    }

    #[test]
    fn names_that_start_with_a_dash_are_always_refused(rest in "\\PC{0,40}") {
        for name in [format!("-{rest}"), format!("--{rest}")] {
            let problems = spec(&name).validate().expect_err("an option-like name was accepted");
            prop_assert!(problems.contains("`branch`"), "{problems}");
        }
    }
}

#[test]
fn the_classic_attacks_are_refused() {
    for name in [
        "--upload-pack=touch /tmp/pwned",
        "-oProxyCommand=touch /tmp/pwned",
        "-f",
        "../../etc/passwd",
        "/etc/passwd",
        "a/../b",
        "main@{1}",
        "x.lock",
        "trailing/",
        "trailing.",
        "with space",
        "tab\there",
        "nul\0here",
        "back\\slash",
        "a//b",
        "refs/heads/../x",
        "@",
        "main\u{202e}x",
        "zero\u{200b}width",
        &"a".repeat(300),
    ] {
        let problems = spec(name)
            .validate()
            .expect_err(&format!("{name:?} was accepted"));
        assert!(problems.contains("`branch`"), "{name:?}: {problems}");
    }
}
