//! Facts kept in two places must agree: the README's configuration table and the variables
//! the binary reads, and the mainloop variables the deployment files set; testkit's copy of the search attributes and the workflows' list; the
//! CLI's defaults and the main thread's fallback settings.

use std::collections::BTreeSet;

use clap::{CommandFactory, Parser};
use mainloop::config::Cli;

fn cli_variables() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut stack = vec![Cli::command()];
    while let Some(command) = stack.pop() {
        for arg in command.get_arguments() {
            if let Some(env) = arg.get_env() {
                names.insert(env.to_string_lossy().into_owned());
            }
        }
        stack.extend(command.get_subcommands().cloned());
    }
    names
}

fn readme_variables() -> BTreeSet<String> {
    let readme = include_str!("../README.md");
    let table = readme
        .split("## Configuration")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .unwrap_or_default();
    table
        .lines()
        .filter(|line| line.starts_with("| `"))
        .filter_map(|line| line.split('|').nth(1))
        .flat_map(|cell| cell.split(','))
        .map(|name| {
            name.trim()
                .trim_matches('`')
                .trim_end_matches('*')
                .to_string()
        })
        .collect()
}

/// `MAINLOOP_*` names a deployment file sets: `NAME=` (kustomize literals, Dockerfile `ENV`),
/// `NAME:` (compose environment maps) or `name: NAME` (Kubernetes env entries).
fn mainloop_variables_in(path: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|error| panic!("reading {path}: {error}"));
    let mut names = BTreeSet::new();
    for (at, _) in text.match_indices("MAINLOOP_") {
        let name: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        let after = text[at + name.len()..].chars().next();
        let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let before = text[line_start..at].trim_start_matches([' ', '-']);
        // `${MAINLOOP_…}` is compose's own interpolation of .env, not a setting of mainloop.
        let interpolated = text[..at].ends_with('{');
        if !interpolated && (matches!(after, Some('=' | ':')) || before == "name: ") {
            names.insert(name);
        }
    }
    names
}

#[test]
fn deployment_files_set_only_variables_mainloop_reads() {
    let cli = cli_variables();
    for path in [
        "k8s/base/kustomization.yaml",
        "k8s/base/api.yaml",
        "k8s/base/worker.yaml",
        "k8s/overlays/dev/kustomization.yaml",
        "k8s/overlays/prod/kustomization.yaml",
        "docker-compose.yml",
        "Dockerfile",
    ] {
        let set = mainloop_variables_in(path);
        let unknown: Vec<_> = set.difference(&cli).collect();
        assert!(
            unknown.is_empty(),
            "{path} sets variables mainloop does not read: {unknown:?}"
        );
    }
    // The scan finds what it should, so an empty result above means something.
    let compose = mainloop_variables_in("docker-compose.yml");
    assert!(compose.contains("MAINLOOP_AUTH_TOKEN") && compose.contains("MAINLOOP_METRICS_LISTEN"));
}

#[test]
fn the_readme_documents_every_variable_and_only_real_ones() {
    let cli = cli_variables();
    let readme = readme_variables();
    let undocumented: Vec<_> = cli.difference(&readme).collect();
    assert!(
        undocumented.is_empty(),
        "add to the README's table: {undocumented:?}"
    );
    // Variables read outside clap: the log filter and Temporal's standard connection settings.
    let outside_clap = |name: &str| name == "RUST_LOG" || name.starts_with("TEMPORAL_");
    let unknown: Vec<_> = readme
        .difference(&cli)
        .filter(|name| !outside_clap(name))
        .collect();
    assert!(
        unknown.is_empty(),
        "the README documents variables the binary does not read: {unknown:?}"
    );
}

#[test]
fn testkit_registers_the_search_attributes_the_workflows_use() {
    let testkit: Vec<(&str, &str)> = mainloop_testkit::temporal::SEARCH_ATTRIBUTES.to_vec();
    let workflows: Vec<(&str, &str)> = mainloop_workflows::SEARCH_ATTRIBUTES.to_vec();
    assert_eq!(testkit, workflows);
}

#[test]
fn the_deployments_register_every_search_attribute_the_workflows_use() {
    // The set-up script (docker-compose and the Kubernetes Job) and the dev overlay's server.
    for path in [
        "temporal/setup/setup-namespace.sh",
        "k8s/overlays/dev/temporal-dev.yaml",
    ] {
        let text =
            std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
                .unwrap_or_else(|error| panic!("reading {path}: {error}"));
        for (name, kind) in mainloop_workflows::SEARCH_ATTRIBUTES {
            assert!(
                text.contains(name) && *kind == "Keyword",
                "{path} does not register the {kind} search attribute {name}"
            );
        }
    }
}

#[derive(Parser)]
struct ChatOnly {
    #[command(flatten)]
    chat: mainloop::config::ChatArgs,
}

#[test]
fn the_cli_defaults_are_the_main_threads_fallback() {
    let defaults = ChatOnly::try_parse_from(["mainloop"]).expect("defaults parse");
    let settings = mainloop::run::chat_settings(&defaults.chat);
    assert_eq!(
        settings.thread,
        mainloop_workflows::defaults::thread_config()
    );
}

/// The value of the first `NAME=value` (or `NAME="value"`) line in a file of the repository.
fn assignment_in(path: &str, name: &str) -> String {
    let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|error| panic!("reading {path}: {error}"));
    text.lines()
        .filter_map(|line| {
            line.trim_start_matches("ARG ")
                .strip_prefix(&format!("{name}="))
        })
        .map(|value| {
            let value = value.split_whitespace().next().unwrap_or_default();
            value.trim_matches('"').to_string()
        })
        .next()
        .unwrap_or_else(|| panic!("{path} does not set {name}"))
}

#[test]
fn the_images_ship_the_claude_code_version_the_tests_run() {
    let tested = assignment_in("scripts/setup", "CLAUDE_CODE_VERSION");
    for dockerfile in ["Dockerfile", "claude-agent/Dockerfile"] {
        assert_eq!(
            assignment_in(dockerfile, "CLAUDE_CODE_VERSION"),
            tested,
            "{dockerfile} pins another Claude Code than scripts/setup installs for the tests"
        );
    }
}
