//! The two job runners against real processes: the local runner with shell scripts standing in
//! for `mainloop-agent`, the Kubernetes runner against testkit's fake API server, whose
//! kubelet runs the same kind of script as the pod's container.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, PostParams};
use mainloop_activities::jobs::kubernetes::{KubernetesRunner, KubernetesSettings};
use mainloop_activities::jobs::local::{LocalRunner, LocalRunnerSettings};
use mainloop_activities::jobs::{JobError, JobLine, JobRequest, JobRunner, JobSecrets};
use mainloop_agent::protocol::{
    AgentEvent, AgentResult, AgentSpec, LogSource, Mode, Outcome, Usage,
};
use mainloop_testkit::kubernetes::{FakeKubernetes, ProcessKubelet};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(15);
const IMAGE: &str = "ghcr.io/test/mainloop-agent:1";
const TASK: &str = "0123abcd-0000-4000-8000-000000000001";

fn spec(mode: Mode) -> AgentSpec {
    AgentSpec {
        task_id: TASK.into(),
        mode,
        repo: "octo/widgets".into(),
        clone_url: "https://github.com/octo/widgets.git".into(),
        base_branch: "main".into(),
        branch: None,
        title: "Add dark mode".into(),
        description: "Please add a dark mode".into(),
        issue_number: None,
        pr_number: None,
        plan: None,
        answers: Vec::new(),
        revision: None,
        ci_failures: None,
        review_feedback: None,
        model: "claude-opus-4".into(),
        git_author_name: "mainloop".into(),
        git_author_email: "mainloop@example.com".into(),
    }
}

fn request(name: &str, timeout: Duration) -> JobRequest {
    JobRequest {
        name: name.into(),
        task_id: TASK.into(),
        spec: spec(Mode::Plan),
        timeout,
    }
}

fn result(summary: &str) -> AgentResult {
    AgentResult {
        outcome: Outcome::Plan {
            plan: "1. add a toggle".into(),
            questions: Vec::new(),
        },
        summary: summary.into(),
        usage: Usage::default(),
    }
}

/// `echo` of a protocol line, for a script (no line contains a single quote).
fn echo(event: &AgentEvent) -> String {
    let line = event.to_line();
    assert!(!line.contains('\''), "{line}");
    format!("echo '{line}'")
}

fn echo_log(source: LogSource, text: &str) -> String {
    echo(&AgentEvent::Log {
        source,
        text: text.into(),
    })
}

fn echo_result(summary: &str) -> String {
    echo(&AgentEvent::Result(result(summary)))
}

/// Not under `/tmp`: the fake kubelet maps the pod's `/tmp` mount onto a directory of its
/// own, and would rewrite paths passed in the environment that lie under it.
fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir")
}

fn drain(rx: &mut mpsc::UnboundedReceiver<JobLine>) -> Vec<(u64, LogSource, String)> {
    let mut lines = Vec::new();
    while let Ok(line) = rx.try_recv() {
        lines.push((line.index, line.source, line.text));
    }
    lines
}

async fn next_line(rx: &mut mpsc::UnboundedReceiver<JobLine>) -> JobLine {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a line in time")
        .expect("the runner is still sending")
}

fn marker_count(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success());
}

/// Opens the gate a script waits on with `read _ < "$GATE"`.
async fn open_gate(path: &Path) {
    let path = path.to_path_buf();
    tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || std::fs::write(path, "go\n")),
    )
    .await
    .expect("the script reads the gate")
    .expect("the writer thread ends")
    .expect("the gate opens");
}

fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rfind(')')
            .and_then(|at| stat[at + 1..].split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

async fn wait_gone(pid: u32) {
    tokio::time::timeout(WAIT, async {
        while !gone(pid) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("process {pid} still runs"));
}

async fn read_pid(path: &Path) -> u32 {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(text) = std::fs::read_to_string(path)
                && let Ok(pid) = text.trim().parse()
            {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the script writes its child's pid")
}

fn retryable(error: JobError) -> String {
    match error {
        JobError::Retryable(message) => message,
        JobError::Permanent(message) => {
            panic!("expected a retryable error, got permanent: {message}")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// LocalRunner
// ---------------------------------------------------------------------------------------------

struct Local {
    dir: tempfile::TempDir,
    runner: LocalRunner,
}

impl Local {
    fn new(script: &str) -> Local {
        let dir = temp_dir();
        let mut settings = LocalRunnerSettings::new("/bin/sh", dir.path().join("jobs"));
        settings.agent_args = vec!["-c".into(), script.into()];
        settings.secrets = JobSecrets {
            github_token: Some("ghp_local".into()),
            ..JobSecrets::default()
        };
        settings.extra_env = vec![
            (
                "MARKER".into(),
                dir.path().join("marker").display().to_string(),
            ),
            ("GATE".into(), dir.path().join("gate").display().to_string()),
            (
                "CHILD_PID".into(),
                dir.path().join("child.pid").display().to_string(),
            ),
        ];
        settings.kill_grace = Duration::from_secs(2);
        Local {
            runner: LocalRunner::new(settings),
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[tokio::test]
async fn local_job_forwards_lines_and_returns_the_result() {
    let script = [
        r#"echo started >> "$MARKER""#.to_owned(),
        echo_log(LogSource::Agent, "cloning"),
        echo_log(LogSource::Claude, "reading the code"),
        r#"echo "stray token=$GITHUB_TOKEN anthropic=${ANTHROPIC_API_KEY:-unset} ws=$MAINLOOP_AGENT_WORKSPACE pwd=$(pwd)""#.to_owned(),
        r#"echo "$MAINLOOP_AGENT_SPEC" > spec.json"#.to_owned(),
        "echo 'to stderr' >&2".to_owned(),
        String::new(),
        echo_result("planned"),
        echo_log(LogSource::Agent, "after the result"),
    ]
    .join("\n");
    let local = Local::new(&script);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let got = local
        .runner
        .run(&request("task-0123abcd-plan-1", WAIT), tx)
        .await
        .expect("the job succeeds");
    assert_eq!(got, result("planned"));

    let job_dir = local
        .runner
        .job_dir(TASK, "task-0123abcd-plan-1")
        .expect("job dir");
    let workspace = job_dir.join("workspace");
    let lines = drain(&mut rx);
    assert_eq!(
        lines,
        vec![
            (0, LogSource::Agent, "cloning".into()),
            (1, LogSource::Claude, "reading the code".into()),
            (
                2,
                LogSource::Agent,
                format!(
                    "stray token=ghp_local anthropic=unset ws={} pwd={}",
                    workspace.display(),
                    workspace.display()
                )
            ),
        ]
    );
    let spec_json = std::fs::read_to_string(workspace.join("spec.json")).expect("spec written");
    let written: AgentSpec = serde_json::from_str(&spec_json).expect("the spec is JSON");
    assert_eq!(written, spec(Mode::Plan));
    assert_eq!(
        std::fs::read_to_string(job_dir.join("stderr.log")).expect("stderr"),
        "to stderr\n"
    );
    assert_eq!(marker_count(&local.path("marker")), 1);
}

#[tokio::test]
async fn local_retried_run_reattaches_to_the_running_job() {
    let script = [
        r#"echo started >> "$MARKER""#.to_owned(),
        echo_log(LogSource::Agent, "before the gate"),
        r#"read _ < "$GATE""#.to_owned(),
        echo_log(LogSource::Agent, "after the gate"),
        echo_result("done"),
    ]
    .join("\n");
    let local = Local::new(&script);
    mkfifo(&local.path("gate"));
    let job = request("task-0123abcd-plan-1", WAIT);

    // The first attempt follows the job, then its worker "crashes": the future is dropped.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let runner = local.runner.clone();
    let first_job = job.clone();
    let first = tokio::spawn(async move { runner.run(&first_job, tx).await });
    assert_eq!(next_line(&mut rx).await.text, "before the gate");
    first.abort();
    assert!(first.await.expect_err("aborted").is_cancelled());

    // The retry re-attaches: it replays the output from the first line and sees the rest.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let runner = local.runner.clone();
    let second = tokio::spawn(async move { runner.run(&job, tx).await });
    let replayed = next_line(&mut rx).await;
    assert_eq!(
        (replayed.index, replayed.text.as_str()),
        (0, "before the gate")
    );
    open_gate(&local.path("gate")).await;
    let got = tokio::time::timeout(WAIT, second)
        .await
        .expect("the job ends in time")
        .expect("the task runs")
        .expect("the job succeeds");
    assert_eq!(got, result("done"));
    assert_eq!(
        drain(&mut rx),
        vec![(1, LogSource::Agent, "after the gate".into())]
    );
    assert_eq!(marker_count(&local.path("marker")), 1, "started once");
}

#[tokio::test]
async fn local_finished_job_replays_without_restarting() {
    let script = [
        r#"echo started >> "$MARKER""#.to_owned(),
        echo_log(LogSource::Claude, "thinking"),
        echo_result("first"),
    ]
    .join("\n");
    let local = Local::new(&script);
    let job = request("task-0123abcd-plan-1", WAIT);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let first = local.runner.run(&job, tx).await.expect("succeeds");
    let first_lines = drain(&mut rx);

    let (tx, mut rx) = mpsc::unbounded_channel();
    let again = local.runner.run(&job, tx).await.expect("replays");
    assert_eq!(again, first);
    assert_eq!(drain(&mut rx), first_lines);
    assert_eq!(marker_count(&local.path("marker")), 1, "not started again");
}

#[tokio::test]
async fn local_job_without_a_result_is_retryable_and_runs_afresh_next_time() {
    // The first start fails; the second (a retry) succeeds.
    let script = [
        r#"echo started >> "$MARKER""#.to_owned(),
        echo_log(LogSource::Agent, "attempt"),
        r#"if [ "$(wc -l < "$MARKER")" -lt 2 ]; then echo 'boom: no network' >&2; touch leftover; exit 3; fi"#.to_owned(),
        r#"if [ -e leftover ]; then echo 'the workspace was not emptied' >&2; exit 4; fi"#.to_owned(),
        echo_result("second time lucky"),
    ]
    .join("\n");
    let local = Local::new(&script);
    let job = request("task-0123abcd-plan-1", WAIT);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let error = local.runner.run(&job, tx).await.expect_err("no result");
    let message = retryable(error);
    assert!(
        message.contains("job ended without a result: exit 3"),
        "{message}"
    );
    assert!(message.contains("boom: no network"), "{message}");
    assert_eq!(
        drain(&mut rx),
        vec![(0, LogSource::Agent, "attempt".into())]
    );

    let (tx, mut rx) = mpsc::unbounded_channel();
    let got = local
        .runner
        .run(&job, tx)
        .await
        .expect("the retry succeeds");
    assert_eq!(got, result("second time lucky"));
    assert_eq!(marker_count(&local.path("marker")), 2);
    // The new attempt's lines follow the old attempt's: no index names two lines.
    assert_eq!(
        drain(&mut rx),
        vec![(1, LogSource::Agent, "attempt".into())]
    );
}

#[tokio::test]
async fn local_timeout_kills_the_job() {
    let script = [
        r#"sleep 30 & echo $! > "$CHILD_PID""#.to_owned(),
        echo_log(LogSource::Agent, "working"),
        "wait".to_owned(),
    ]
    .join("\n");
    let local = Local::new(&script);
    let (tx, _rx) = mpsc::unbounded_channel();
    let error = local
        .runner
        .run(
            &request("task-0123abcd-plan-1", Duration::from_millis(300)),
            tx,
        )
        .await
        .expect_err("times out");
    let message = retryable(error);
    assert!(message.contains("timed out after 300ms"), "{message}");
    wait_gone(read_pid(&local.path("child.pid")).await).await;
}

/// Runs a job that starts a child with `spawn` (which writes its pid to `$CHILD_PID`) and
/// waits, then cancels it; returns the local runner, the job's error and the child's pid.
async fn cancel_running_job(spawn: &str, job: &str) -> (Local, String, u32) {
    let script = [
        spawn.to_owned(),
        echo_log(LogSource::Agent, "working"),
        "wait".to_owned(),
    ]
    .join("\n");
    let local = Local::new(&script);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let runner = local.runner.clone();
    let name = job.to_owned();
    let running = tokio::spawn(async move { runner.run(&request(&name, WAIT), tx).await });
    assert_eq!(next_line(&mut rx).await.text, "working");
    let child = read_pid(&local.path("child.pid")).await;

    local.runner.cancel(TASK, job).await.expect("cancels");
    let error = tokio::time::timeout(WAIT, running)
        .await
        .expect("the follower ends")
        .expect("the task runs")
        .expect_err("no result");
    (local, retryable(error), child)
}

#[tokio::test]
async fn local_cancel_kills_the_process_group() {
    let (local, message, child) = cancel_running_job(
        r#"sleep 30 & echo $! > "$CHILD_PID""#,
        "task-0123abcd-plan-1",
    )
    .await;
    assert!(message.contains("cancelled"), "{message}");
    wait_gone(child).await;
    // Idempotent, also for jobs that never existed.
    local
        .runner
        .cancel(TASK, "task-0123abcd-plan-1")
        .await
        .expect("cancelling again is fine");
    local
        .runner
        .cancel(TASK, "task-0123abcd-never-1")
        .await
        .expect("cancelling nothing is fine");
}

/// Claude Code runs each Bash command in a session of its own; cancelling the job must stop
/// such a command too, not only the job's process group.
#[tokio::test]
async fn local_cancel_kills_commands_that_left_the_process_group() {
    let (_local, _message, child) = cancel_running_job(
        r#"setsid sleep 30 & echo $! > "$CHILD_PID""#,
        "task-0123abcd-impl-1",
    )
    .await;
    wait_gone(child).await;
}

#[tokio::test]
async fn local_cleanup_kills_the_task_jobs_and_removes_their_directory() {
    let script = [
        r#"sleep 30 & echo $! > "$CHILD_PID""#.to_owned(),
        echo_log(LogSource::Agent, "working"),
        "wait".to_owned(),
    ]
    .join("\n");
    let local = Local::new(&script);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let runner = local.runner.clone();
    let running =
        tokio::spawn(async move { runner.run(&request("task-0123abcd-plan-1", WAIT), tx).await });
    assert_eq!(next_line(&mut rx).await.text, "working");
    let child = read_pid(&local.path("child.pid")).await;
    let task_dir = local.path("jobs").join(TASK);
    assert!(task_dir.is_dir());

    local.runner.cleanup(TASK).await.expect("cleans up");
    assert!(!task_dir.exists());
    wait_gone(child).await;
    let ended = tokio::time::timeout(WAIT, running)
        .await
        .expect("the follower ends")
        .expect("the task runs");
    assert!(ended.is_err());
    local.runner.cleanup(TASK).await.expect("idempotent");
}

// ---------------------------------------------------------------------------------------------
// KubernetesRunner against the fake API server
// ---------------------------------------------------------------------------------------------

struct Cluster {
    dir: tempfile::TempDir,
    fake: FakeKubernetes,
    kubelet: ProcessKubelet,
    runner: KubernetesRunner,
    namespace: String,
}

impl Cluster {
    async fn new(script: &str) -> Cluster {
        Self::with(script, |_| {}).await
    }

    async fn with(script: &str, configure: impl FnOnce(&mut KubernetesSettings)) -> Cluster {
        let dir = temp_dir();
        let kubelet = ProcessKubelet::new()
            .image(IMAGE, ["/bin/sh", "-c", script])
            .grace(Duration::from_secs(2));
        let fake = FakeKubernetes::builder()
            .kubelet(kubelet.clone())
            .start()
            .await
            .expect("the fake starts");
        let mut settings = KubernetesSettings::new(IMAGE);
        settings.poll_interval = Duration::from_millis(20);
        settings.secrets = JobSecrets {
            github_token: Some("ghp_cluster".into()),
            anthropic_api_key: Some("sk-ant-cluster".into()),
            claude_code_oauth_token: None,
        };
        settings.extra_env = vec![
            ("ANTHROPIC_BASE_URL".into(), "http://127.0.0.1:9".into()),
            (
                "MARKER".into(),
                dir.path().join("marker").display().to_string(),
            ),
            ("GATE".into(), dir.path().join("gate").display().to_string()),
            (
                "CHILD_PID".into(),
                dir.path().join("child.pid").display().to_string(),
            ),
        ];
        configure(&mut settings);
        let url = fake.base_url().parse().expect("a URL");
        let runner =
            KubernetesRunner::from_config(kube::Config::new(url), settings).expect("a client");
        let namespace = runner.namespace(TASK);
        Cluster {
            dir,
            fake,
            kubelet,
            runner,
            namespace,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn job(&self, name: &str) -> Option<Value> {
        self.fake.object("jobs", &self.namespace, name)
    }
}

#[tokio::test]
async fn kubernetes_job_runs_restricted_and_returns_its_result() {
    let script = [
        r#"echo started >> "$MARKER""#.to_owned(),
        echo_log(LogSource::Agent, "cloning"),
        r#"echo "token=$GITHUB_TOKEN key=$ANTHROPIC_API_KEY oauth=${CLAUDE_CODE_OAUTH_TOKEN:-unset}""#.to_owned(),
        r#"touch "$MAINLOOP_AGENT_WORKSPACE/file" "$HOME/file" && echo "writable""#.to_owned(),
        echo_result("planned"),
    ]
    .join("\n");
    let cluster = Cluster::new(&script).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let got = cluster
        .runner
        .run(
            &request("task-0123abcd-plan-1", Duration::from_secs(600)),
            tx,
        )
        .await
        .expect("the job succeeds");
    assert_eq!(got, result("planned"));
    assert_eq!(
        drain(&mut rx),
        vec![
            (0, LogSource::Agent, "cloning".into()),
            (
                1,
                LogSource::Agent,
                "token=ghp_cluster key=sk-ant-cluster oauth=unset".into()
            ),
            (2, LogSource::Agent, "writable".into()),
        ]
    );

    let ns = &cluster.namespace;
    assert_eq!(ns, &format!("mainloop-task-{TASK}"));
    let namespace = cluster
        .fake
        .object("namespaces", "", ns)
        .expect("the namespace exists");
    let labels = &namespace["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/managed-by"], "mainloop");
    assert_eq!(labels["mainloop.dev/task-id"], TASK);
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");

    let policy = cluster
        .fake
        .object("networkpolicies", ns, "agent-egress")
        .expect("the network policy exists");
    assert_eq!(policy["spec"]["podSelector"], json!({}));
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(policy["spec"]["ingress"], json!([]));
    let egress = &policy["spec"]["egress"];
    assert_eq!(
        egress[0],
        json!({"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]})
    );
    assert_eq!(
        egress[1]["ports"],
        json!([{"protocol": "TCP", "port": 443}])
    );
    let v4 = &egress[1]["to"][0]["ipBlock"];
    assert_eq!(v4["cidr"], "0.0.0.0/0");
    for private in [
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
    ] {
        assert!(
            v4["except"]
                .as_array()
                .expect("except")
                .contains(&json!(private)),
            "{private} excluded"
        );
    }
    assert_eq!(egress[1]["to"][1]["ipBlock"]["cidr"], "::/0");

    let secret = cluster
        .fake
        .object("secrets", ns, "agent-secrets")
        .expect("the secret exists");
    assert_eq!(
        secret["data"],
        json!({"github-token": "Z2hwX2NsdXN0ZXI=", "anthropic-api-key": "c2stYW50LWNsdXN0ZXI="})
    );

    let job = cluster.job("task-0123abcd-plan-1").expect("the job exists");
    let text = job.to_string();
    assert!(
        !text.contains("ghp_cluster") && !text.contains("sk-ant-cluster"),
        "{text}"
    );
    let job_labels = &job["metadata"]["labels"];
    assert_eq!(job_labels["app.kubernetes.io/managed-by"], "mainloop");
    assert_eq!(job_labels["mainloop.dev/task-id"], TASK);
    assert_eq!(job_labels["mainloop.dev/mode"], "plan");
    let job_spec = &job["spec"];
    assert_eq!(job_spec["backoffLimit"], 0);
    assert_eq!(job_spec["activeDeadlineSeconds"], 600);
    assert_eq!(job_spec["ttlSecondsAfterFinished"], 3600);
    let pod = &job_spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(
        pod["securityContext"],
        json!({
            "runAsNonRoot": true,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        })
    );
    let container = &pod["containers"][0];
    assert_eq!(container["name"], "agent");
    assert_eq!(container["image"], IMAGE);
    assert_eq!(
        container["securityContext"],
        json!({
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"]},
        })
    );
    assert_eq!(
        container["resources"],
        json!({
            "requests": {"cpu": "500m", "memory": "1Gi"},
            "limits": {"cpu": "2", "memory": "4Gi"},
        })
    );
    let mounts: Vec<(&str, &str)> = container["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or(""),
                m["mountPath"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        mounts,
        vec![
            ("workspace", "/workspace"),
            ("tmp", "/tmp"),
            ("home", "/home/agent")
        ]
    );
    let env = container["env"].as_array().expect("env");
    let var = |name: &str| {
        env.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("{name} is set"))
            .clone()
    };
    assert_eq!(var("MAINLOOP_AGENT_WORKSPACE")["value"], "/workspace");
    assert_eq!(var("HOME")["value"], "/home/agent");
    assert_eq!(var("ANTHROPIC_BASE_URL")["value"], "http://127.0.0.1:9");
    let spec_env: AgentSpec =
        serde_json::from_str(var("MAINLOOP_AGENT_SPEC")["value"].as_str().expect("spec"))
            .expect("the spec is JSON");
    assert_eq!(spec_env, spec(Mode::Plan));
    assert_eq!(
        var("GITHUB_TOKEN")["valueFrom"],
        json!({"secretKeyRef": {"name": "agent-secrets", "key": "github-token", "optional": false}})
    );
    assert!(env.iter().all(|v| v["name"] != "CLAUDE_CODE_OAUTH_TOKEN"));

    let applied: Vec<String> = cluster
        .fake
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| format!("{} {}", r.path, r.content_type.clone().unwrap_or_default()))
        .collect();
    assert_eq!(applied.len(), 2, "{applied:?}");
    assert!(
        applied
            .iter()
            .all(|r| r.ends_with("application/apply-patch+yaml"))
    );
}

#[tokio::test]
async fn kubernetes_second_run_attaches_to_the_same_job() {
    let script = [
        r#"echo started >> "$MARKER""#.to_owned(),
        echo_log(LogSource::Agent, "before the gate"),
        r#"read _ < "$GATE""#.to_owned(),
        echo_log(LogSource::Agent, "after the gate"),
        echo_result("done"),
    ]
    .join("\n");
    let cluster = Cluster::new(&script).await;
    mkfifo(&cluster.path("gate"));
    let job = request("task-0123abcd-plan-1", Duration::from_secs(600));

    let (tx, mut rx) = mpsc::unbounded_channel();
    let runner = cluster.runner.clone();
    let first_job = job.clone();
    let first = tokio::spawn(async move { runner.run(&first_job, tx).await });
    assert_eq!(next_line(&mut rx).await.text, "before the gate");
    first.abort();
    assert!(first.await.expect_err("aborted").is_cancelled());

    let (tx, mut rx) = mpsc::unbounded_channel();
    let runner = cluster.runner.clone();
    let second_job = job.clone();
    let second = tokio::spawn(async move { runner.run(&second_job, tx).await });
    let replayed = next_line(&mut rx).await;
    assert_eq!(
        (replayed.index, replayed.text.as_str()),
        (0, "before the gate")
    );
    open_gate(&cluster.path("gate")).await;
    let got = tokio::time::timeout(WAIT, second)
        .await
        .expect("the job ends in time")
        .expect("the task runs")
        .expect("the job succeeds");
    assert_eq!(got, result("done"));
    assert_eq!(
        drain(&mut rx),
        vec![(1, LogSource::Agent, "after the gate".into())]
    );

    // A third run after the end replays the finished job.
    let (tx, _rx) = mpsc::unbounded_channel();
    let again = cluster.runner.run(&job, tx).await.expect("replays");
    assert_eq!(again, got);
    assert_eq!(cluster.fake.objects("jobs", &cluster.namespace).len(), 1);
    assert_eq!(cluster.kubelet.started().len(), 1, "one process");
    assert_eq!(marker_count(&cluster.path("marker")), 1);
}

#[tokio::test]
async fn kubernetes_log_stream_reconnects_without_repeating_lines() {
    let script = [
        echo_log(LogSource::Agent, "one"),
        r#"read _ < "$GATE""#.to_owned(),
        echo_log(LogSource::Agent, "two"),
        echo_result("done"),
    ]
    .join("\n");
    let cluster = Cluster::new(&script).await;
    mkfifo(&cluster.path("gate"));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let runner = cluster.runner.clone();
    let running = tokio::spawn(async move {
        runner
            .run(
                &request("task-0123abcd-plan-1", Duration::from_secs(600)),
                tx,
            )
            .await
    });
    assert_eq!(next_line(&mut rx).await.text, "one");
    let logs_before = log_requests(&cluster.fake);
    cluster.fake.cut_log_streams();
    cluster
        .fake
        .wait_until(WAIT, "the runner to reopen the log", |fake| {
            (log_requests(fake) > logs_before).then_some(())
        })
        .await
        .expect("reconnects");
    open_gate(&cluster.path("gate")).await;
    let got = tokio::time::timeout(WAIT, running)
        .await
        .expect("ends")
        .expect("runs")
        .expect("succeeds");
    assert_eq!(got, result("done"));
    assert_eq!(drain(&mut rx), vec![(1, LogSource::Agent, "two".into())]);
}

fn log_requests(fake: &FakeKubernetes) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.path.ends_with("/log") && r.status == 200)
        .count()
}

#[tokio::test]
async fn kubernetes_cancel_deletes_the_job_and_kills_its_process() {
    let script = [
        r#"sleep 30 & echo $! > "$CHILD_PID""#.to_owned(),
        echo_log(LogSource::Agent, "working"),
        "wait".to_owned(),
    ]
    .join("\n");
    let cluster = Cluster::new(&script).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let runner = cluster.runner.clone();
    let running = tokio::spawn(async move {
        runner
            .run(
                &request("task-0123abcd-plan-1", Duration::from_secs(600)),
                tx,
            )
            .await
    });
    assert_eq!(next_line(&mut rx).await.text, "working");
    let child = read_pid(&cluster.path("child.pid")).await;

    cluster
        .runner
        .cancel(TASK, "task-0123abcd-plan-1")
        .await
        .expect("cancels");
    assert!(cluster.job("task-0123abcd-plan-1").is_none());
    let delete = cluster
        .fake
        .requests()
        .into_iter()
        .find(|r| r.method == "DELETE")
        .expect("a delete");
    assert_eq!(delete.body["propagationPolicy"], "Foreground");
    wait_gone(child).await;
    let error = tokio::time::timeout(WAIT, running)
        .await
        .expect("the follower ends")
        .expect("the task runs")
        .expect_err("no result");
    assert!(retryable(error).contains("deleted"));
    cluster
        .runner
        .cancel(TASK, "task-0123abcd-plan-1")
        .await
        .expect("cancelling again is fine");
}

#[tokio::test]
async fn kubernetes_cleanup_deletes_the_namespace() {
    let cluster = Cluster::new(&echo_result("done")).await;
    let (tx, _rx) = mpsc::unbounded_channel();
    cluster
        .runner
        .run(
            &request("task-0123abcd-plan-1", Duration::from_secs(600)),
            tx,
        )
        .await
        .expect("succeeds");
    assert_eq!(cluster.fake.namespaces().len(), 1);
    cluster.runner.cleanup(TASK).await.expect("cleans up");
    assert!(cluster.fake.namespaces().is_empty());
    assert!(cluster.job("task-0123abcd-plan-1").is_none());
    cluster.runner.cleanup(TASK).await.expect("idempotent");
}

#[tokio::test]
async fn kubernetes_job_without_a_result_is_retryable_and_runs_afresh_next_time() {
    let script = [
        r#"echo started >> "$MARKER""#.to_owned(),
        echo_log(LogSource::Agent, "attempt"),
        r#"if [ "$(wc -l < "$MARKER")" -lt 2 ]; then echo 'boom: no network' >&2; exit 3; fi"#
            .to_owned(),
        echo_result("second time lucky"),
    ]
    .join("\n");
    let cluster = Cluster::new(&script).await;
    let job = request("task-0123abcd-plan-1", Duration::from_secs(600));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let message = retryable(cluster.runner.run(&job, tx).await.expect_err("no result"));
    // The pod log holds stderr too, in whatever order the two streams were read.
    let first = drain(&mut rx);
    let texts: Vec<&str> = first.iter().map(|(_, _, text)| text.as_str()).collect();
    assert!(
        texts.contains(&"attempt") && texts.contains(&"boom: no network"),
        "{first:?}"
    );
    assert!(message.contains("exit 3 (Error)"), "{message}");
    assert!(message.contains("boom: no network"), "{message}");
    let failed = cluster.job("task-0123abcd-plan-1").expect("the job stays");
    assert_eq!(failed["status"]["conditions"][1]["type"], "Failed");

    let (tx, mut rx) = mpsc::unbounded_channel();
    let got = cluster
        .runner
        .run(&job, tx)
        .await
        .expect("the retry succeeds");
    assert_eq!(got, result("second time lucky"));
    assert_eq!(marker_count(&cluster.path("marker")), 2);
    assert_eq!(cluster.fake.objects("jobs", &cluster.namespace).len(), 1);
    // The retry replays the ended job's lines, then numbers the new job's after them.
    let second = drain(&mut rx);
    assert_eq!(second[..2], first[..]);
    assert_eq!(second[2..], [(2, LogSource::Agent, "attempt".into())]);
    let job = cluster.job("task-0123abcd-plan-1").expect("the new job");
    assert_eq!(
        job["metadata"]["annotations"]["mainloop.dev/first-line-index"],
        "2"
    );
}

#[tokio::test]
async fn kubernetes_deadline_exceeded_is_a_timeout() {
    let script = [echo_log(LogSource::Agent, "working"), "sleep 30".to_owned()].join("\n");
    let cluster = Cluster::new(&script).await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let message = retryable(
        cluster
            .runner
            .run(&request("task-0123abcd-plan-1", Duration::from_secs(1)), tx)
            .await
            .expect_err("times out"),
    );
    assert!(message.contains("timed out after 1s"), "{message}");
    let job = cluster.job("task-0123abcd-plan-1").expect("the job stays");
    assert_eq!(job["status"]["conditions"][1]["reason"], "DeadlineExceeded");
}

#[tokio::test]
async fn kubernetes_image_that_cannot_be_pulled_is_permanent() {
    let cluster = Cluster::with("true", |settings| {
        settings.image = "ghcr.io/test/missing:1".into();
        settings.start_grace = Duration::from_millis(100);
    })
    .await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let error = cluster
        .runner
        .run(
            &request("task-0123abcd-plan-1", Duration::from_secs(600)),
            tx,
        )
        .await
        .expect_err("cannot start");
    match error {
        JobError::Permanent(message) => assert!(message.contains("ErrImagePull"), "{message}"),
        JobError::Retryable(message) => panic!("expected permanent: {message}"),
    }
    assert!(
        cluster.job("task-0123abcd-plan-1").is_none(),
        "given up and deleted"
    );
}

#[tokio::test]
async fn fake_rejects_a_job_without_the_restricted_security_settings() {
    let cluster = Cluster::new("true").await;
    // The runner creates the namespace (with its `restricted` label) on its first run.
    let (tx, _rx) = mpsc::unbounded_channel();
    cluster
        .runner
        .run(
            &request("task-0123abcd-plan-1", Duration::from_secs(600)),
            tx,
        )
        .await
        .expect_err("`true` prints no result");

    let bare: Job = serde_json::from_value(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "bare"},
        "spec": {"template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "agent", "image": IMAGE}],
        }}},
    }))
    .expect("a job");
    let client = kube::Client::try_from(kube::Config::new(
        cluster.fake.base_url().parse().expect("a URL"),
    ))
    .expect("a client");
    let jobs: Api<Job> = Api::namespaced(client, &cluster.namespace);
    let error = jobs
        .create(&PostParams::default(), &bare)
        .await
        .expect_err("refused");
    let kube::Error::Api(status) = error else {
        panic!("expected an API error, got {error:?}");
    };
    assert_eq!(status.code, 403);
    assert!(status.is_forbidden());
    for violation in [
        "violates PodSecurity \"restricted:latest\"",
        "allowPrivilegeEscalation != false",
        "unrestricted capabilities",
        "runAsNonRoot != true",
        "seccompProfile",
    ] {
        assert!(status.message.contains(violation), "{}", status.message);
    }
    assert!(cluster.job("bare").is_none());
}
