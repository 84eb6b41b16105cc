//! The fake Kubernetes API over real HTTP: status bodies, validation, Pod Security admission,
//! the Job controller and the process kubelet.

use std::path::Path;
use std::time::Duration;

use mainloop_testkit::kubernetes::{FakeKubernetes, PodExit, PodHandle, ProcessKubelet};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(fake: &FakeKubernetes) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: fake.base_url(),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request
                .header("content-type", content_type)
                .body(body.to_string());
        }
        let response = request.send().await.expect("the fake answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, "", None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, "application/json", Some(body))
            .await
    }

    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::PUT, path, "application/json", Some(body))
            .await
    }

    async fn patch(&self, path: &str, content_type: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::PATCH, path, content_type, Some(body))
            .await
    }

    async fn delete(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(
            reqwest::Method::DELETE,
            path,
            "application/json",
            Some(body),
        )
        .await
    }

    async fn namespace(&self, name: &str, labels: Value) {
        let (status, body) = self
            .post(
                "/api/v1/namespaces",
                json!({"metadata": {"name": name, "labels": labels}}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
}

fn job(name: &str, container: Value) -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {"restartPolicy": "Never", "containers": [container]}},
        },
    })
}

fn shell(script: &str) -> Value {
    json!({"name": "main", "image": "busybox:1", "command": ["/bin/sh", "-c", script]})
}

fn restricted(mut container: Value) -> Value {
    container["securityContext"] = json!({
        "allowPrivilegeEscalation": false,
        "runAsNonRoot": true,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    });
    container
}

#[tokio::test]
async fn errors_are_status_objects_with_the_real_reasons() {
    let fake = FakeKubernetes::start().await.expect("starts");
    let client = Client::new(&fake);

    let (status, body) = client.get("/api/v1/namespaces/nope").await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "namespaces \"nope\" not found", "reason": "NotFound",
            "details": {"name": "nope", "kind": "namespaces"}, "code": 404,
        })
    );

    client.namespace("team", json!({})).await;
    let (status, body) = client
        .post("/api/v1/namespaces", json!({"metadata": {"name": "team"}}))
        .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (409, Some("AlreadyExists"))
    );
    assert_eq!(body["message"], "namespaces \"team\" already exists");

    let (status, body) = client
        .post(
            "/apis/batch/v1/namespaces/missing/jobs",
            job("j", shell("true")),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["message"], "namespaces \"missing\" not found");

    let (status, body) = client.get("/apis/batch/v1/namespaces/team/jobs/none").await;
    assert_eq!(
        (status, body["message"].as_str()),
        (404, Some("jobs.batch \"none\" not found"))
    );
    assert_eq!(body["details"]["group"], "batch");

    let (status, _) = client
        .get("/apis/apps/v1/namespaces/team/deployments")
        .await;
    assert_eq!(status, 404);

    let namespace = fake.object("namespaces", "", "team").expect("stored");
    assert!(namespace["metadata"]["uid"].is_string());
    assert!(namespace["metadata"]["creationTimestamp"].is_string());
    assert!(namespace["metadata"]["resourceVersion"].is_string());
    assert_eq!(
        namespace["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "team"
    );
    assert_eq!(namespace["status"]["phase"], "Active");
}

#[tokio::test]
async fn invalid_objects_are_refused() {
    let fake = FakeKubernetes::start().await.expect("starts");
    let client = Client::new(&fake);
    let (status, body) = client
        .post(
            "/api/v1/namespaces",
            json!({"metadata": {"name": "Not_A_Label"}}),
        )
        .await;
    assert_eq!((status, body["reason"].as_str()), (422, Some("Invalid")));
    client.namespace("team", json!({})).await;

    let mut no_policy = job("j", shell("true"));
    no_policy["spec"]["template"]["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("restartPolicy");
    let (status, body) = client
        .post("/apis/batch/v1/namespaces/team/jobs", no_policy)
        .await;
    assert_eq!(status, 422);
    assert_eq!(
        body["message"],
        "Job.batch \"j\" is invalid: spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\""
    );
    assert_eq!(
        body["details"]["causes"][0]["field"],
        "spec.template.spec.restartPolicy"
    );

    let mut always = job("j", shell("true"));
    always["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
    let (status, _) = client
        .post("/apis/batch/v1/namespaces/team/jobs", always)
        .await;
    assert_eq!(status, 422);

    let mut no_containers = job("j", shell("true"));
    no_containers["spec"]["template"]["spec"]["containers"] = json!([]);
    let (status, body) = client
        .post("/apis/batch/v1/namespaces/team/jobs", no_containers)
        .await;
    assert_eq!(status, 422, "{body}");

    let (status, _) = client
        .post(
            "/api/v1/namespaces/team/secrets",
            json!({"metadata": {"name": "s"}, "data": {"k": "not base64!"}}),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = client
        .post(
            "/api/v1/namespaces/team/secrets",
            json!({"metadata": {"name": "s", "labels": {"bad label": "x"}}}),
        )
        .await;
    assert_eq!(status, 422);
    let (status, _) = client
        .post(
            "/apis/networking.k8s.io/v1/namespaces/team/networkpolicies",
            json!({"metadata": {"name": "p"}, "spec": {"podSelector": {}, "egress": [
                {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}}]}
            ]}}),
        )
        .await;
    assert_eq!(status, 422);
    assert!(fake.objects("jobs", "team").is_empty());
}

#[tokio::test]
async fn secrets_are_replaced_patched_and_applied() {
    let fake = FakeKubernetes::start().await.expect("starts");
    let client = Client::new(&fake);
    client.namespace("team", json!({})).await;
    let path = "/api/v1/namespaces/team/secrets";

    let (status, created) = client
        .post(
            path,
            json!({"metadata": {"name": "s"}, "stringData": {"token": "hello"}}),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(created["data"], json!({"token": "aGVsbG8="}));
    assert_eq!(created["type"], "Opaque");

    let mut stale = created.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    let (status, body) = client.put(&format!("{path}/s"), stale).await;
    assert_eq!((status, body["reason"].as_str()), (409, Some("Conflict")));

    let mut fresh = created.clone();
    fresh["data"] = json!({"token": "d29ybGQ="});
    let (status, replaced) = client.put(&format!("{path}/s"), fresh).await;
    assert_eq!(status, 200);
    assert_eq!(replaced["metadata"]["uid"], created["metadata"]["uid"]);
    assert_ne!(
        replaced["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );

    let (status, merged) = client
        .patch(
            &format!("{path}/s"),
            "application/merge-patch+json",
            json!({"data": {"other": "eA=="}, "metadata": {"labels": {"a": "b"}}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        merged["data"],
        json!({"token": "d29ybGQ=", "other": "eA=="})
    );

    let applied = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "t"}, "data": {"k": "eQ=="}});
    let apply_path = format!("{path}/t?fieldManager=test&force=true");
    let (status, _) = client
        .patch(&apply_path, "application/apply-patch+yaml", applied.clone())
        .await;
    assert_eq!(status, 201);
    let mut again = applied;
    again["data"] = json!({"k2": "eg=="});
    let (status, updated) = client
        .patch(&apply_path, "application/apply-patch+yaml", again)
        .await;
    assert_eq!(status, 200);
    assert_eq!(updated["data"], json!({"k2": "eg=="}));
    let (status, _) = client
        .patch(
            &format!("{path}/t"),
            "application/apply-patch+yaml",
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "t"}}),
        )
        .await;
    assert_eq!(status, 400, "apply needs a field manager");

    let (status, listed) = client.get(&format!("{path}?labelSelector=a%3Db")).await;
    assert_eq!(status, 200);
    assert_eq!(listed["kind"], "SecretList");
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(1));
    assert!(listed["items"][0].get("kind").is_none());

    let (status, deleted) = client.delete(&format!("{path}/t"), json!({})).await;
    assert_eq!((status, deleted["status"].as_str()), (200, Some("Success")));
}

#[tokio::test]
async fn pod_security_admission_refuses_jobs_that_break_the_level() {
    let fake = FakeKubernetes::start().await.expect("starts");
    let client = Client::new(&fake);
    client
        .namespace(
            "locked",
            json!({"pod-security.kubernetes.io/enforce": "restricted"}),
        )
        .await;
    client
        .namespace(
            "loose",
            json!({"pod-security.kubernetes.io/enforce": "baseline"}),
        )
        .await;

    let (status, body) = client
        .post(
            "/apis/batch/v1/namespaces/locked/jobs",
            job("bare", shell("true")),
        )
        .await;
    assert_eq!((status, body["reason"].as_str()), (403, Some("Forbidden")));
    assert_eq!(
        body["message"],
        "jobs.batch \"bare\" is forbidden: violates PodSecurity \"restricted:latest\": \
         allowPrivilegeEscalation != false (container \"main\" must set securityContext.allowPrivilegeEscalation=false), \
         unrestricted capabilities (container \"main\" must set securityContext.capabilities.drop=[\"ALL\"]), \
         runAsNonRoot != true (pod or container \"main\" must set securityContext.runAsNonRoot=true), \
         seccompProfile (pod or container \"main\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
    );

    let (status, body) = client
        .post(
            "/apis/batch/v1/namespaces/locked/jobs",
            job("good", restricted(shell("true"))),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    let (status, _) = client
        .post(
            "/apis/batch/v1/namespaces/loose/jobs",
            job("bare", shell("true")),
        )
        .await;
    assert_eq!(status, 201, "baseline allows it");
    let mut privileged = shell("true");
    privileged["securityContext"] = json!({"privileged": true});
    let (status, body) = client
        .post(
            "/apis/batch/v1/namespaces/loose/jobs",
            job("priv", privileged),
        )
        .await;
    assert_eq!(status, 403);
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("privileged")
    );
}

#[tokio::test]
async fn jobs_run_as_processes_and_report_their_end() {
    let fake = FakeKubernetes::start().await.expect("starts");
    let client = Client::new(&fake);
    client.namespace("team", json!({})).await;
    let mut container = shell(r#"echo "hello $GREETING from $HOSTNAME"; echo oops >&2; exit 2"#);
    container["env"] = json!([{"name": "GREETING", "value": "hi"}]);
    container["terminationMessagePolicy"] = json!("FallbackToLogsOnError");
    let (status, created) = client
        .post(
            "/apis/batch/v1/namespaces/team/jobs",
            job("work", container),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["metadata"]["labels"]["job-name"], "work");

    let pod = fake
        .wait_for_pod_phase("team", "work", "Failed", WAIT)
        .await
        .expect("the pod fails");
    let pod_name = pod["metadata"]["name"].as_str().expect("a name").to_owned();
    assert!(
        pod_name.starts_with("work-") && pod_name.len() == 10,
        "{pod_name}"
    );
    let labels = &pod["metadata"]["labels"];
    assert_eq!(labels["batch.kubernetes.io/job-name"], "work");
    assert_eq!(labels["controller-uid"], created["metadata"]["uid"]);
    let terminated = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(terminated["exitCode"], 2);
    assert_eq!(terminated["reason"], "Error");
    assert!(
        terminated["message"]
            .as_str()
            .unwrap_or("")
            .contains("oops")
    );

    let log = fake.pod_log("team", &pod_name).expect("a log");
    assert!(
        log.contains(&format!("hello hi from {pod_name}\n")),
        "{log}"
    );
    let (status, body) = client
        .get(&format!(
            "/api/v1/namespaces/team/pods/{pod_name}/log?container=main"
        ))
        .await;
    assert_eq!(status, 200);
    assert!(body.as_str().unwrap_or("").contains("oops"));

    let job = fake
        .wait_until(WAIT, "the job to fail", |fake| {
            fake.object("jobs", "team", "work")
                .filter(|job| job["status"]["conditions"][1]["type"] == "Failed")
        })
        .await
        .expect("the job fails");
    assert_eq!(job["status"]["failed"], 1);
    assert_eq!(
        job["status"]["conditions"][1]["reason"],
        "BackoffLimitExceeded"
    );

    let (status, listed) = client
        .get("/api/v1/namespaces/team/pods?labelSelector=job-name%3Dwork")
        .await;
    assert_eq!(status, 200);
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn logs_stream_while_the_container_runs_and_deletion_kills_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gate = dir.path().join("gate");
    let status = std::process::Command::new("mkfifo")
        .arg(&gate)
        .status()
        .expect("mkfifo");
    assert!(status.success());
    let kubelet = ProcessKubelet::new()
        .image(
            "example/agent:1",
            [
                "/bin/sh",
                "-c",
                r#"echo first; read _ < "$GATE"; echo second; sleep 30"#,
            ],
        )
        .grace(Duration::from_secs(1));
    let fake = FakeKubernetes::builder()
        .kubelet(kubelet.clone())
        .start()
        .await
        .expect("starts");
    let client = Client::new(&fake);
    client.namespace("team", json!({})).await;
    let container = json!({
        "name": "agent",
        "image": "example/agent:1",
        "env": [{"name": "GATE", "value": gate.display().to_string()}],
    });
    let (status, _) = client
        .post(
            "/apis/batch/v1/namespaces/team/jobs",
            job("stream", container),
        )
        .await;
    assert_eq!(status, 201);
    let pod = fake
        .wait_for_pod_phase("team", "stream", "Running", WAIT)
        .await
        .expect("runs");
    let pod_name = pod["metadata"]["name"].as_str().expect("a name").to_owned();

    let mut response = client
        .http
        .get(format!(
            "{}/api/v1/namespaces/team/pods/{pod_name}/log?follow=true",
            client.base
        ))
        .send()
        .await
        .expect("streams");
    let mut seen = String::new();
    while !seen.contains("first\n") {
        let chunk = tokio::time::timeout(WAIT, response.chunk())
            .await
            .expect("a chunk in time")
            .expect("a chunk")
            .expect("not the end");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    open_gate(&gate).await;
    while !seen.contains("second\n") {
        let chunk = tokio::time::timeout(WAIT, response.chunk())
            .await
            .expect("a chunk in time")
            .expect("a chunk")
            .expect("not the end");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let pid = kubelet.started()[0].pid;

    let (status, deleted) = client
        .delete(
            "/apis/batch/v1/namespaces/team/jobs/stream",
            json!({"propagationPolicy": "Foreground"}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(deleted["metadata"]["deletionTimestamp"].is_string());
    // The stream ends once the pod is gone.
    let end = tokio::time::timeout(WAIT, async {
        while let Ok(Some(_)) = response.chunk().await {}
    })
    .await;
    assert!(end.is_ok(), "the log stream ends");
    assert!(fake.pods_of_job("team", "stream").is_empty());
    tokio::time::timeout(WAIT, async {
        while Path::new(&format!("/proc/{pid}")).exists() && !zombie(pid) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the process is killed");
}

fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let at = stat.rfind(')')?;
            stat[at + 1..].split_whitespace().next().map(|s| s == "Z")
        })
        .unwrap_or(true)
}

async fn open_gate(path: &Path) {
    let path = path.to_path_buf();
    tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || std::fs::write(path, "go\n")),
    )
    .await
    .expect("the gate is read")
    .expect("the thread ends")
    .expect("the gate opens");
}

#[tokio::test]
async fn missing_secrets_hold_the_pod_until_they_exist() {
    let fake = FakeKubernetes::start().await.expect("starts");
    let client = Client::new(&fake);
    client.namespace("team", json!({})).await;
    let mut container = shell(r#"echo "token=$TOKEN""#);
    container["env"] =
        json!([{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}}]);
    let (status, _) = client
        .post(
            "/apis/batch/v1/namespaces/team/jobs",
            job("needs", container),
        )
        .await;
    assert_eq!(status, 201);
    let pod = fake
        .wait_until(WAIT, "the pod to wait for its secret", |fake| {
            fake.pods_of_job("team", "needs").into_iter().find(|pod| {
                pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                    == "CreateContainerConfigError"
            })
        })
        .await
        .expect("waits");
    let pod_name = pod["metadata"]["name"].as_str().expect("a name").to_owned();
    let (status, body) = client
        .get(&format!("/api/v1/namespaces/team/pods/{pod_name}/log"))
        .await;
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("is waiting to start: CreateContainerConfigError")
    );

    let (status, _) = client
        .post(
            "/api/v1/namespaces/team/secrets",
            json!({"metadata": {"name": "s"}, "stringData": {"token": "abc"}}),
        )
        .await;
    assert_eq!(status, 201);
    fake.wait_for_pod_phase("team", "needs", "Succeeded", WAIT)
        .await
        .expect("runs once the secret exists");
    assert_eq!(
        fake.pod_log("team", &pod_name).as_deref(),
        Some("token=abc\n")
    );
}

#[tokio::test]
async fn a_custom_kubelet_decides_what_pods_do() {
    let fake = FakeKubernetes::builder()
        .kubelet(|pod: PodHandle| async move {
            if pod.container()["image"] == "broken:1" {
                pod.waiting("ImagePullBackOff", "Back-off pulling image \"broken:1\"");
                pod.stopped().await;
                return PodExit::Stopped;
            }
            pod.started();
            pod.write_log(b"scripted\n");
            PodExit::Exited {
                code: 137,
                reason: Some("OOMKilled".into()),
            }
        })
        .start()
        .await
        .expect("starts");
    let client = Client::new(&fake);
    client.namespace("team", json!({})).await;
    let (status, _) = client
        .post(
            "/apis/batch/v1/namespaces/team/jobs",
            job("oom", json!({"name": "c", "image": "ok:1"})),
        )
        .await;
    assert_eq!(status, 201);
    let pod = fake
        .wait_for_pod_phase("team", "oom", "Failed", WAIT)
        .await
        .expect("fails");
    assert_eq!(
        pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"],
        "OOMKilled"
    );

    let (status, _) = client
        .post(
            "/apis/batch/v1/namespaces/team/jobs",
            job("pull", json!({"name": "c", "image": "broken:1"})),
        )
        .await;
    assert_eq!(status, 201);
    fake.wait_until(WAIT, "the image pull to fail", |fake| {
        fake.pods_of_job("team", "pull").into_iter().find(|pod| {
            pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                == "ImagePullBackOff"
        })
    })
    .await
    .expect("waits");
    let (status, _) = client.delete("/api/v1/namespaces/team", json!({})).await;
    assert_eq!(status, 200);
    assert!(fake.objects("pods", "team").is_empty());
}

#[tokio::test]
async fn active_deadline_fails_the_job_and_deletes_its_pod() {
    let fake = FakeKubernetes::start().await.expect("starts");
    let client = Client::new(&fake);
    client.namespace("team", json!({})).await;
    let mut body = job("slow", shell("sleep 30"));
    body["spec"]["activeDeadlineSeconds"] = json!(1);
    let (status, _) = client
        .post("/apis/batch/v1/namespaces/team/jobs", body)
        .await;
    assert_eq!(status, 201);
    let job = fake
        .wait_until(WAIT, "the deadline", |fake| {
            fake.object("jobs", "team", "slow")
                .filter(|job| job["status"]["conditions"][1]["reason"] == "DeadlineExceeded")
        })
        .await
        .expect("the job fails");
    assert_eq!(job["status"]["conditions"][1]["type"], "Failed");
    assert!(fake.pods_of_job("team", "slow").is_empty());
}
