//! The objects the Kubernetes job runner applies (namespace, NetworkPolicy, Secret and a Job
//! per mode), with every setting away from its default, checked by `scripts/deploy-check` in
//! objects mode: strictly decoded into the official Kubernetes Go types (an unknown or
//! duplicate field fails) and held to the restricted Pod Security Standard. The fake API
//! server of `jobs.rs` accepts any JSON, so this is what proves a real cluster would too.
//!
//! Needs Go (on PATH, or /usr/local/go/bin/go); the checker is built once per run of this
//! test binary into its temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use mainloop_activities::jobs::kubernetes::{JobResources, KubernetesRunner, KubernetesSettings};
use mainloop_activities::jobs::{JobRequest, JobSecrets};
use mainloop_agent::protocol::{AgentSpec, Answer, Mode};
use serde_json::Value;

const TASK: &str = "0123abcd-0000-4000-8000-000000000001";
const MODES: [Mode; 4] = [Mode::Plan, Mode::Implement, Mode::Fix, Mode::Feedback];

/// Every setting that shapes an object differs from [`KubernetesSettings::new`]'s default.
fn settings() -> KubernetesSettings {
    let mut settings = KubernetesSettings::new("registry.example.com/mainloop-agent:1.2.3");
    settings.image_pull_policy = Some("IfNotPresent".into());
    settings.image_pull_secrets = vec!["registry-a".into(), "registry-b".into()];
    settings.command = Some(vec![
        "/usr/local/bin/mainloop-agent".into(),
        "--verbose".into(),
    ]);
    settings.namespace_prefix = "ml-".into();
    settings.resources = JobResources {
        cpu_request: "250m".into(),
        memory_request: "512Mi".into(),
        cpu_limit: "1500m".into(),
        memory_limit: "3Gi".into(),
    };
    settings.ttl_seconds_after_finished = 600;
    settings.egress_ports = vec![443, 8443];
    // IPv6 ranges add a second ipBlock peer to the NetworkPolicy.
    settings.egress_excluded_cidrs = vec![
        "10.0.0.0/8".into(),
        "10.96.0.0/12".into(),
        "fd00:10:96::/112".into(),
        "fe80::/10".into(),
    ];
    settings.extra_env = vec![
        (
            "ANTHROPIC_BASE_URL".into(),
            "https://proxy.example.com".into(),
        ),
        // Overrides one of the runner's own variables.
        ("TMPDIR".into(), "/tmp/agent".into()),
    ];
    settings.secrets = JobSecrets {
        github_token: Some("ghp_example".into()),
        anthropic_api_key: Some("sk-ant-example".into()),
        claude_code_oauth_token: Some("oauth-example".into()),
    };
    settings
}

fn spec(mode: Mode) -> AgentSpec {
    let planned = mode != Mode::Plan;
    AgentSpec {
        task_id: TASK.into(),
        mode,
        repo: "octo/widgets".into(),
        clone_url: "https://github.com/octo/widgets.git".into(),
        base_branch: "main".into(),
        branch: planned.then(|| "mainloop/dark-mode".into()),
        title: "Add dark mode".into(),
        description: "Please add a dark mode".into(),
        issue_number: Some(7),
        pr_number: planned.then_some(8),
        plan: Some("1. add a toggle".into()),
        answers: vec![Answer {
            question_id: "q1".into(),
            question: "Which pages?".into(),
            answer: "All of them".into(),
        }],
        revision: (mode == Mode::Plan).then(|| "Also the settings page".into()),
        ci_failures: (mode == Mode::Fix).then(|| "lint: 2 errors".into()),
        review_feedback: (mode == Mode::Feedback).then(|| "Rename the toggle".into()),
        model: "claude-opus-4".into(),
        git_author_name: "mainloop".into(),
        git_author_email: "mainloop@example.com".into(),
    }
}

/// The runner never connects: building its objects needs no cluster.
fn runner() -> KubernetesRunner {
    let url = "http://127.0.0.1:9".parse().expect("a URL");
    KubernetesRunner::from_config(kube::Config::new(url), settings()).expect("a client")
}

/// What the runner applies for one job of each mode, as JSON values.
fn objects(runner: &KubernetesRunner) -> Vec<Value> {
    let mut objects = vec![
        serde_json::to_value(runner.namespace_manifest(TASK)).expect("namespace JSON"),
        serde_json::to_value(runner.network_policy(TASK)).expect("network policy JSON"),
        serde_json::to_value(runner.secret(TASK)).expect("secret JSON"),
    ];
    for mode in MODES {
        let request = JobRequest {
            name: format!("task-0123abcd-{}-2", mode.as_str()),
            task_id: TASK.into(),
            spec: spec(mode),
            // A fraction of a second rounds the deadline up.
            timeout: Duration::from_millis(5_400_250),
        };
        let job = runner.job(&request).expect("a job");
        objects.push(serde_json::to_value(job).expect("job JSON"));
    }
    objects
}

/// `go` from PATH, else where the official tarball installs it.
fn go() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("go"))
        .find(|candidate| candidate.is_file());
    let fallback = PathBuf::from("/usr/local/go/bin/go");
    match on_path {
        Some(go) => go,
        None if fallback.is_file() => fallback,
        None => panic!(
            "Go is needed to build scripts/deploy-check, which checks the runner's objects: \
             install it (https://go.dev/dl) or put `go` on PATH"
        ),
    }
}

/// The checker, built once for all tests of this binary.
fn checker() -> &'static Path {
    static CHECKER: OnceLock<PathBuf> = OnceLock::new();
    CHECKER.get_or_init(|| {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/deploy-check");
        let binary = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy-check");
        let output = Command::new(go())
            .args(["build", "-o"])
            .arg(&binary)
            .arg(".")
            .current_dir(&source)
            .output()
            .expect("go runs");
        assert!(
            output.status.success(),
            "building {} failed:\n{}",
            source.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        binary
    })
}

/// Runs the checker in objects mode on `objects`, written as one multi-document file.
fn check(objects: &[Value]) -> Output {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let file = dir.path().join("objects.yaml");
    let documents: Vec<String> = objects
        .iter()
        .map(|object| serde_json::to_string_pretty(object).expect("JSON"))
        .collect();
    std::fs::write(&file, documents.join("\n---\n")).expect("objects written");
    Command::new(checker())
        .arg("--objects")
        .arg(&file)
        .output()
        .expect("the checker runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn the_runners_objects_are_valid_kubernetes_and_restricted() {
    let objects = objects(&runner());
    let output = check(&objects);
    let report = stdout(&output);
    assert!(
        output.status.success(),
        "the checker rejected the runner's objects:\n{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        report.starts_with("ok ") && report.contains(": 7 objects"),
        "{report}"
    );
}

/// One way to break the runner's Job, and what the checker must say about it.
struct Breakage {
    what: &'static str,
    apply: fn(&mut Value),
    reason: &'static str,
}

const BREAKAGES: [Breakage; 3] = [
    Breakage {
        what: "an unknown field",
        apply: |job| job["spec"]["template"]["spec"]["containers"][0]["bogus"] = Value::Bool(true),
        reason: r#"unknown field "spec.template.spec.containers[0].bogus""#,
    },
    Breakage {
        what: "a misspelt field",
        apply: |job| {
            let spec = job["spec"].as_object_mut().expect("a spec");
            let limit = spec.remove("backoffLimit").expect("backoffLimit");
            spec.insert("backOffLimit".into(), limit);
        },
        reason: r#"unknown field "spec.backOffLimit""#,
    },
    Breakage {
        what: "no seccomp profile",
        apply: |job| {
            let pod = &mut job["spec"]["template"]["spec"]["securityContext"];
            pod.as_object_mut()
                .expect("a pod security context")
                .remove("seccompProfile");
        },
        reason: r#"container "agent": seccompProfile is not RuntimeDefault"#,
    },
];

/// The same objects with one thing broken are rejected, naming what is wrong: the check
/// above is real, not a decoder that accepts anything.
#[tokio::test]
async fn a_broken_job_is_rejected_with_the_reason() {
    let runner = runner();
    for breakage in BREAKAGES {
        let mut objects = objects(&runner);
        let job = objects.last_mut().expect("a job");
        (breakage.apply)(job);
        let output = check(&objects);
        let report = stdout(&output);
        let what = breakage.what;
        assert_eq!(output.status.code(), Some(1), "{what}:\n{report}");
        assert!(
            report.contains(breakage.reason),
            "{what}: the report does not say {:?}:\n{report}",
            breakage.reason
        );
    }
}
