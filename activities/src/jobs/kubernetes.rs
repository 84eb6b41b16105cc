//! The Kubernetes job runner: one namespace per task, one Job per job.
//!
//! It owns, in the task's namespace `{namespace_prefix}{task_id}` (labelled as managed by
//! mainloop, with the task id, and enforcing the `restricted` Pod Security Standard):
//! - the NetworkPolicy `agent-egress`: no ingress at all; egress only to DNS and to the
//!   configured TCP ports (443) of addresses outside the excluded ranges (the cluster's pod
//!   and service networks, private and link-local ranges, so the agent reaches GitHub and
//!   Anthropic but not the cluster, the node or cloud metadata);
//! - the Secret `agent-secrets`: the job's tokens (only those set), applied on every run so a
//!   rotated token reaches the next job; the Job refers to it with `secretKeyRef`, so no token
//!   is ever part of a Job spec;
//! - one Job per job name: no retries (`backoffLimit: 0`), `activeDeadlineSeconds` from the
//!   request's timeout, `ttlSecondsAfterFinished`, no service-account token, non-root with a
//!   read-only root file system, all capabilities dropped, the runtime's seccomp profile,
//!   resource requests and limits, and `emptyDir`s for the workspace, `/tmp` and `HOME`.
//!
//! Starting is idempotent: an existing Job with the request's name is attached to (a retried
//! activity follows the job its crashed predecessor started), except one that had already
//! ended without a result, which is deleted and started again, as the local runner does.
//! Following reads the pod's log stream from the first line (reconnecting, and skipping what
//! it saw, if the stream drops while the pod runs) until the result line; a job that ends
//! without one is judged by its pod and Job status.
//!
//! The worker needs, cluster-wide: namespaces create/get/delete; in task namespaces: secrets
//! and networkpolicies get/create/patch, jobs create/get/delete, pods list/get, pods/log get.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::AsyncBufReadExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerStateTerminated, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    LocalObjectReference, Namespace, Pod, PodSecurityContext, PodSpec, PodTemplateSpec,
    ResourceRequirements, SeccompProfile, Secret, SecretKeySelector, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Client, Config};
use mainloop_agent::protocol::{AgentResult, SPEC_ENV};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{
    JobError, JobLine, JobRequest, JobRunner, JobSecrets, OutputParser, WORKSPACE_ENV,
    check_job_name,
};

/// Field manager for server-side apply.
const FIELD_MANAGER: &str = "mainloop";
const NETWORK_POLICY: &str = "agent-egress";
const SECRET: &str = "agent-secrets";
const CONTAINER: &str = "agent";
const WORKSPACE_PATH: &str = "/workspace";
const HOME_PATH: &str = "/home/agent";
const TMP_PATH: &str = "/tmp";
/// The agent image runs as this user and group (any non-root id works; the image's files are
/// world-readable).
const AGENT_UID: i64 = 10001;

const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
const MANAGED_BY: &str = "mainloop";
const TASK_ID_LABEL: &str = "mainloop.dev/task-id";
const MODE_LABEL: &str = "mainloop.dev/mode";
const NAME_LABEL: &str = "app.kubernetes.io/name";
const PSA_ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";
/// Set by the Job controller on the pods of one Job (and only that Job, unlike `job-name`,
/// which a re-created Job of the same name shares).
const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
/// On a Job started again after its predecessor ended without a result: the index of its
/// first log line (see [`JobLine`]).
const FIRST_INDEX_ANNOTATION: &str = "mainloop.dev/first-line-index";

/// Container states in which a pod never gets to run the agent without someone changing the
/// configuration (after [`KubernetesSettings::start_grace`], to ride out a registry hiccup).
const START_ERRORS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
];
/// How often in a row a dropped log stream is reopened while its pod still runs (the count
/// starts again once a reopened stream delivers lines).
const LOG_RECONNECTS: u32 = 3;
/// How long a pod's final status may lag the end of its log.
const SETTLE_TIME: Duration = Duration::from_secs(30);
/// How long a deleted Job may take to disappear before it is started again.
const DELETE_WAIT: Duration = Duration::from_secs(60);

/// Requests and limits of the agent container (Kubernetes quantities).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobResources {
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: String,
    pub memory_limit: String,
}

impl Default for JobResources {
    fn default() -> Self {
        Self {
            cpu_request: "500m".into(),
            memory_request: "1Gi".into(),
            cpu_limit: "2".into(),
            memory_limit: "4Gi".into(),
        }
    }
}

/// Configuration of a [`KubernetesRunner`].
#[derive(Debug, Clone)]
pub struct KubernetesSettings {
    /// The agent image, e.g. `ghcr.io/you/mainloop-agent:0.1.0`.
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never`; unset leaves the cluster's default.
    pub image_pull_policy: Option<String>,
    /// Names of registry Secrets that must exist in every task namespace.
    pub image_pull_secrets: Vec<String>,
    /// Overrides the image's entrypoint; normally unset.
    pub command: Option<Vec<String>>,
    /// Task namespaces are `{namespace_prefix}{task_id}`, made a DNS label.
    pub namespace_prefix: String,
    pub resources: JobResources,
    pub ttl_seconds_after_finished: i32,
    /// TCP ports the agent may reach outside the excluded ranges.
    pub egress_ports: Vec<u16>,
    /// Ranges the agent may not reach (besides DNS): the cluster's pod and service networks
    /// and anything else internal. IPv6 egress is allowed only if at least one IPv6 range is
    /// listed here, so a list written with IPv4 only never opens a dual-stack cluster's
    /// IPv6 pod network.
    pub egress_excluded_cidrs: Vec<String>,
    /// Extra environment for the agent, e.g. `ANTHROPIC_BASE_URL`; overrides the defaults.
    pub extra_env: Vec<(String, String)>,
    pub secrets: JobSecrets,
    /// How often pod and Job status are checked while waiting for the pod to start or end.
    pub poll_interval: Duration,
    /// How long a container may fail to start (image pull errors, a missing Secret key)
    /// before the job is given up as permanently failed.
    pub start_grace: Duration,
    /// Beyond `activeDeadlineSeconds`, how long the runner waits for the cluster to end a
    /// job before it deletes the job itself.
    pub deadline_slack: Duration,
}

impl KubernetesSettings {
    /// Defaults: prefix `mainloop-task-`, 500m/1Gi requests, 2/4Gi limits, a one-hour TTL,
    /// egress to TCP 443 outside private, link-local, CGNAT and ULA ranges, 1 s polling.
    pub fn new(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            image_pull_policy: None,
            image_pull_secrets: Vec::new(),
            command: None,
            namespace_prefix: "mainloop-task-".into(),
            resources: JobResources::default(),
            ttl_seconds_after_finished: 3600,
            egress_ports: vec![443],
            egress_excluded_cidrs: [
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "169.254.0.0/16",
                "100.64.0.0/10",
                "127.0.0.0/8",
                "fc00::/7",
                "fe80::/10",
                "::1/128",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            extra_env: Vec::new(),
            secrets: JobSecrets::default(),
            poll_interval: Duration::from_secs(1),
            start_grace: Duration::from_secs(300),
            deadline_slack: Duration::from_secs(120),
        }
    }
}

/// Runs jobs as Kubernetes Jobs; see the module documentation.
#[derive(Clone)]
pub struct KubernetesRunner {
    client: Client,
    settings: Arc<KubernetesSettings>,
}

impl std::fmt::Debug for KubernetesRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesRunner")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl KubernetesRunner {
    pub fn new(client: Client, settings: KubernetesSettings) -> Self {
        Self {
            client,
            settings: Arc::new(settings),
        }
    }

    /// With the in-cluster configuration, or the kubeconfig (`KUBECONFIG`, `~/.kube/config`).
    ///
    /// # Errors
    /// If neither is usable.
    pub async fn try_default(settings: KubernetesSettings) -> Result<Self, JobError> {
        let client = Client::try_default().await.map_err(|error| {
            JobError::Permanent(format!("no Kubernetes configuration: {error}"))
        })?;
        Ok(Self::new(client, settings))
    }

    /// With an explicit configuration, e.g. `Config::new(url)` for a test server.
    ///
    /// # Errors
    /// If the client cannot be built from it (bad TLS material).
    pub fn from_config(config: Config, settings: KubernetesSettings) -> Result<Self, JobError> {
        let client = Client::try_from(config).map_err(|error| {
            JobError::Permanent(format!("cannot build a Kubernetes client: {error}"))
        })?;
        Ok(Self::new(client, settings))
    }

    pub fn settings(&self) -> &KubernetesSettings {
        &self.settings
    }

    /// The task's namespace.
    pub fn namespace(&self, task_id: &str) -> String {
        dns_label(&format!("{}{task_id}", self.settings.namespace_prefix))
    }

    fn labels(&self, task_id: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
            (TASK_ID_LABEL.to_owned(), label_value(task_id)),
        ])
    }

    /// The task's namespace object.
    pub fn namespace_manifest(&self, task_id: &str) -> Namespace {
        let mut labels = self.labels(task_id);
        labels.insert(PSA_ENFORCE_LABEL.to_owned(), "restricted".to_owned());
        Namespace {
            metadata: ObjectMeta {
                name: Some(self.namespace(task_id)),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        }
    }

    /// The NetworkPolicy of a task namespace.
    pub fn network_policy(&self, task_id: &str) -> NetworkPolicy {
        let (v6, v4): (Vec<String>, Vec<String>) = self
            .settings
            .egress_excluded_cidrs
            .iter()
            .cloned()
            .partition(|cidr| cidr.contains(':'));
        let mut peers = vec![ip_block("0.0.0.0/0", v4)];
        if !v6.is_empty() {
            peers.push(ip_block("::/0", v6));
        }
        let port = |protocol: &str, port: u16| NetworkPolicyPort {
            protocol: Some(protocol.to_owned()),
            port: Some(IntOrString::Int(i32::from(port))),
            end_port: None,
        };
        let egress = vec![
            // Cluster DNS sits in the excluded service network, so DNS goes anywhere.
            NetworkPolicyEgressRule {
                to: None,
                ports: Some(vec![port("UDP", 53), port("TCP", 53)]),
            },
            NetworkPolicyEgressRule {
                to: Some(peers),
                ports: Some(
                    self.settings
                        .egress_ports
                        .iter()
                        .map(|p| port("TCP", *p))
                        .collect(),
                ),
            },
        ];
        NetworkPolicy {
            metadata: ObjectMeta {
                name: Some(NETWORK_POLICY.to_owned()),
                namespace: Some(self.namespace(task_id)),
                labels: Some(self.labels(task_id)),
                ..ObjectMeta::default()
            },
            spec: Some(NetworkPolicySpec {
                // Every pod of the namespace; no ingress rule means no ingress.
                pod_selector: Some(LabelSelector::default()),
                policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
                ingress: Some(Vec::new()),
                egress: Some(egress),
            }),
        }
    }

    /// The Secret with the job's tokens.
    pub fn secret(&self, task_id: &str) -> Secret {
        let data = self
            .settings
            .secrets
            .vars()
            .into_iter()
            .map(|var| {
                (
                    var.key.to_owned(),
                    ByteString(var.value.as_bytes().to_vec()),
                )
            })
            .collect();
        Secret {
            metadata: ObjectMeta {
                name: Some(SECRET.to_owned()),
                namespace: Some(self.namespace(task_id)),
                labels: Some(self.labels(task_id)),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(data),
            ..Secret::default()
        }
    }

    /// The Job for `request`.
    ///
    /// # Errors
    /// If the request's name is not a DNS label or its spec cannot be encoded.
    pub fn job(&self, request: &JobRequest) -> Result<Job, JobError> {
        check_job_name(&request.name)?;
        let spec = serde_json::to_string(&request.spec)
            .map_err(|error| JobError::Permanent(format!("cannot encode the job spec: {error}")))?;
        let settings = &self.settings;
        let mut labels = self.labels(&request.task_id);
        labels.insert(MODE_LABEL.to_owned(), request.spec.mode.as_str().to_owned());
        labels.insert(NAME_LABEL.to_owned(), "mainloop-agent".to_owned());

        let mut env: Vec<EnvVar> = Vec::new();
        let mut set = |name: &str, value: &str| {
            let var = EnvVar {
                name: name.to_owned(),
                value: Some(value.to_owned()),
                value_from: None,
            };
            match env.iter_mut().find(|existing| existing.name == name) {
                Some(existing) => *existing = var,
                None => env.push(var),
            }
        };
        set(SPEC_ENV, &spec);
        set(WORKSPACE_ENV, WORKSPACE_PATH);
        set("HOME", HOME_PATH);
        set("TMPDIR", TMP_PATH);
        for (name, value) in &settings.extra_env {
            set(name, value);
        }
        for var in settings.secrets.vars() {
            env.retain(|existing| existing.name != var.env);
            env.push(EnvVar {
                name: var.env.to_owned(),
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: SECRET.to_owned(),
                        key: var.key.to_owned(),
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                }),
            });
        }

        let quantities = |cpu: &str, memory: &str| {
            BTreeMap::from([
                ("cpu".to_owned(), Quantity(cpu.to_owned())),
                ("memory".to_owned(), Quantity(memory.to_owned())),
            ])
        };
        let resources = &settings.resources;
        let volume = |name: &str| Volume {
            name: name.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        };
        let mount = |name: &str, path: &str| VolumeMount {
            name: name.to_owned(),
            mount_path: path.to_owned(),
            ..VolumeMount::default()
        };
        let container = Container {
            name: CONTAINER.to_owned(),
            image: Some(settings.image.clone()),
            image_pull_policy: settings.image_pull_policy.clone(),
            command: settings.command.clone(),
            env: Some(env),
            resources: Some(ResourceRequirements {
                requests: Some(quantities(
                    &resources.cpu_request,
                    &resources.memory_request,
                )),
                limits: Some(quantities(&resources.cpu_limit, &resources.memory_limit)),
                ..ResourceRequirements::default()
            }),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                run_as_non_root: Some(true),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".to_owned()]),
                    add: None,
                }),
                ..SecurityContext::default()
            }),
            volume_mounts: Some(vec![
                mount("workspace", WORKSPACE_PATH),
                mount("tmp", TMP_PATH),
                mount("home", HOME_PATH),
            ]),
            // A crash's last log lines end up in the pod status, hence in the job's error.
            termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
            ..Container::default()
        };
        let pull_secrets = (!settings.image_pull_secrets.is_empty()).then(|| {
            settings
                .image_pull_secrets
                .iter()
                .map(|name| LocalObjectReference { name: name.clone() })
                .collect()
        });
        let pod = PodSpec {
            restart_policy: Some("Never".to_owned()),
            automount_service_account_token: Some(false),
            // Service environment variables would tell the agent about the cluster.
            enable_service_links: Some(false),
            image_pull_secrets: pull_secrets,
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(AGENT_UID),
                run_as_group: Some(AGENT_UID),
                fs_group: Some(AGENT_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_owned(),
                    localhost_profile: None,
                }),
                ..PodSecurityContext::default()
            }),
            containers: vec![container],
            volumes: Some(vec![volume("workspace"), volume("tmp"), volume("home")]),
            ..PodSpec::default()
        };
        let deadline = i64::try_from(request.timeout.as_secs())
            .unwrap_or(i64::MAX)
            .saturating_add(i64::from(request.timeout.subsec_nanos() > 0))
            .max(1);
        Ok(Job {
            metadata: ObjectMeta {
                name: Some(request.name.clone()),
                namespace: Some(self.namespace(&request.task_id)),
                labels: Some(labels.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(JobSpec {
                backoff_limit: Some(0),
                active_deadline_seconds: Some(deadline),
                ttl_seconds_after_finished: Some(settings.ttl_seconds_after_finished),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(pod),
                },
                ..JobSpec::default()
            }),
            status: None,
        })
    }

    async fn ensure_namespace(&self, task_id: &str) -> Result<(), JobError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let manifest = self.namespace_manifest(task_id);
        let name = self.namespace(task_id);
        match api.create(&PostParams::default(), &manifest).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.is_already_exists() => {}
            Err(error) => return Err(kube_error("creating the task namespace", error)),
        }
        let existing = api
            .get(&name)
            .await
            .map_err(|error| kube_error("reading the task namespace", error))?;
        let labels = existing.metadata.labels.unwrap_or_default();
        if labels.get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGED_BY) {
            // Never put tokens into a namespace someone else made.
            return Err(JobError::Permanent(format!(
                "namespace {name} exists but is not managed by mainloop"
            )));
        }
        if existing.metadata.deletion_timestamp.is_some() {
            return Err(JobError::Retryable(format!(
                "namespace {name} is being deleted"
            )));
        }
        Ok(())
    }

    async fn apply<K>(&self, namespace: &str, name: &str, object: &K) -> Result<(), JobError>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + serde::Serialize
            + serde::de::DeserializeOwned,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .await
        .map_err(|error| {
            kube_error(
                &format!("applying {} {name}", K::kind(&K::DynamicType::default())),
                error,
            )
        })?;
        Ok(())
    }

    /// Creates the Job, or finds the one that exists; `true` if it was created now.
    async fn create_or_get(
        &self,
        jobs: &Api<Job>,
        manifest: &Job,
        name: &str,
    ) -> Result<(Job, bool), JobError> {
        // Twice: the Job may vanish (TTL, a cancel) between a refused create and the read.
        for _ in 0..2 {
            match jobs.create(&PostParams::default(), manifest).await {
                Ok(job) => {
                    tracing::info!(job = name, "job created");
                    return Ok((job, true));
                }
                Err(kube::Error::Api(status)) if status.is_already_exists() => {}
                Err(error) => return Err(kube_error("creating the job", error)),
            }
            match jobs.get_opt(name).await {
                Ok(Some(job)) => {
                    tracing::info!(job = name, "attaching to the existing job");
                    return Ok((job, false));
                }
                Ok(None) => continue,
                Err(error) => return Err(kube_error("reading the job", error)),
            }
        }
        Err(JobError::Retryable(format!(
            "job {name} keeps appearing and disappearing"
        )))
    }

    /// Follows the job's pod from the first log line to the result.
    async fn follow(
        &self,
        jobs: &Api<Job>,
        job: &Job,
        timeout: Duration,
        parser: &mut OutputParser,
        lines: &mpsc::UnboundedSender<JobLine>,
    ) -> Result<AgentResult, JobError> {
        let name = job.metadata.name.clone().unwrap_or_default();
        let uid = job.metadata.uid.clone().unwrap_or_default();
        let namespace = job.metadata.namespace.clone().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let selector = ListParams::default().labels(&format!("{CONTROLLER_UID_LABEL}={uid}"));
        let deadline = self.hard_deadline(job, timeout);
        let poll = self.settings.poll_interval;
        let mut seen = 0u64;
        let mut seen_at_last_drop = 0u64;
        let mut reconnects = 0;
        let mut start_error: Option<(String, Instant)> = None;
        loop {
            if Instant::now() >= deadline {
                tracing::warn!(job = %name, "the cluster did not end the job at its deadline; deleting it");
                self.delete_job(jobs, &name, DeleteParams::foreground())
                    .await?;
                return Err(timed_out(timeout));
            }
            let listed = pods
                .list(&selector)
                .await
                .map_err(|error| kube_error("listing the job's pods", error))?;
            let pod = listed.items.into_iter().max_by_key(|pod| {
                pod.metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.as_millisecond())
            });
            let Some(pod) = pod else {
                // No pod yet, or none any more: the Job's status says which.
                let current = jobs
                    .get_opt(&name)
                    .await
                    .map_err(|error| kube_error("reading the job", error))?;
                match current.filter(|job| job.metadata.uid.as_deref() == Some(uid.as_str())) {
                    None => {
                        return Err(JobError::Retryable(format!("job {name} was deleted")));
                    }
                    Some(current) if finished(&current).is_some() => {
                        return Err(self.conclude(jobs, &pods, &name, &uid, None, timeout).await);
                    }
                    Some(_) => {
                        tokio::time::sleep(poll).await;
                        continue;
                    }
                }
            };
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            let phase = pod
                .status
                .as_ref()
                .and_then(|status| status.phase.as_deref())
                .unwrap_or("Pending");
            if phase == "Pending" {
                if let Some((reason, message)) = waiting_reason(&pod)
                    && START_ERRORS.contains(&reason.as_str())
                {
                    let since = match &start_error {
                        Some((seen_reason, since))
                            if START_ERRORS.contains(&seen_reason.as_str()) =>
                        {
                            *since
                        }
                        _ => Instant::now(),
                    };
                    start_error = Some((reason.clone(), since));
                    let immediate =
                        matches!(reason.as_str(), "InvalidImageName" | "ErrImageNeverPull");
                    if immediate || since.elapsed() >= self.settings.start_grace {
                        // It would only hold its resources until the deadline.
                        self.delete_job(jobs, &name, DeleteParams::background())
                            .await?;
                        return Err(JobError::Permanent(format!(
                            "the agent container cannot start: {reason}: {message}"
                        )));
                    }
                } else {
                    start_error = None;
                }
                let current = jobs
                    .get_opt(&name)
                    .await
                    .map_err(|error| kube_error("reading the job", error))?;
                if current.as_ref().and_then(finished).is_some() {
                    return Err(self
                        .conclude(jobs, &pods, &name, &uid, Some(&pod_name), timeout)
                        .await);
                }
                tokio::time::sleep(poll).await;
                continue;
            }
            match read_log(&pods, &pod_name, &mut seen, parser, lines).await {
                Ok(LogEnd::Result(result)) => return Ok(result),
                Ok(LogEnd::NotReady) => {
                    tokio::time::sleep(poll).await;
                    continue;
                }
                Ok(LogEnd::Eof) | Err(_) => {}
            }
            // The stream ended without the result: a dropped connection if the pod runs on.
            let current = pods
                .get_opt(&pod_name)
                .await
                .map_err(|error| kube_error("reading the job's pod", error))?;
            let running = current
                .as_ref()
                .and_then(|pod| pod.status.as_ref())
                .and_then(|status| status.phase.as_deref())
                == Some("Running")
                && terminated(current.as_ref()).is_none();
            if seen > seen_at_last_drop {
                // The stream made progress since it last dropped: a new budget.
                reconnects = 0;
                seen_at_last_drop = seen;
            }
            if running && reconnects < LOG_RECONNECTS {
                reconnects += 1;
                tracing::info!(pod = %pod_name, seen, "the log stream dropped while the pod runs; reopening it");
                continue;
            }
            return Err(self
                .conclude(jobs, &pods, &name, &uid, Some(&pod_name), timeout)
                .await);
        }
    }

    /// Why a job ended without a result, from its pod's and its own final status.
    async fn conclude(
        &self,
        jobs: &Api<Job>,
        pods: &Api<Pod>,
        name: &str,
        uid: &str,
        pod_name: Option<&str>,
        timeout: Duration,
    ) -> JobError {
        let settle = Instant::now() + SETTLE_TIME;
        loop {
            let job = match jobs.get_opt(name).await {
                Ok(job) => job.filter(|job| job.metadata.uid.as_deref() == Some(uid)),
                Err(error) => return kube_error("reading the job", error),
            };
            let pod = match pod_name {
                Some(pod_name) => match pods.get_opt(pod_name).await {
                    Ok(pod) => pod,
                    Err(error) => return kube_error("reading the job's pod", error),
                },
                None => None,
            };
            let job_failure = job
                .as_ref()
                .and_then(finished)
                .and_then(|(complete, reason, message)| (!complete).then_some((reason, message)));
            if let Some((reason, _)) = &job_failure
                && reason == "DeadlineExceeded"
            {
                return timed_out(timeout);
            }
            if job
                .as_ref()
                .is_some_and(|job| job.metadata.deletion_timestamp.is_some())
            {
                // Cancelled: its pod is being stopped, whatever its exit says.
                return JobError::Retryable(format!("job {name} was deleted"));
            }
            if let Some(state) = terminated(pod.as_ref()) {
                let reason = state.reason.clone().unwrap_or_default();
                if reason == "OOMKilled" {
                    return JobError::Permanent(format!(
                        "the agent ran out of memory (OOMKilled at a limit of {}); raise the job's memory limit",
                        self.settings.resources.memory_limit
                    ));
                }
                let mut message = format!(
                    "job ended without a result: exit {} ({})",
                    state.exit_code,
                    if reason.is_empty() {
                        "no reason"
                    } else {
                        reason.as_str()
                    }
                );
                if let Some(last) = state
                    .message
                    .as_deref()
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                {
                    message.push_str(", last lines:\n");
                    message.push_str(last);
                }
                return JobError::Retryable(message);
            }
            if let Some(reason) = pod
                .as_ref()
                .and_then(|pod| pod.status.as_ref())
                .filter(|status| status.phase.as_deref() == Some("Failed"))
                .and_then(|status| status.reason.clone())
            {
                // Evicted, node lost, …: the cluster's doing, worth another try.
                return JobError::Retryable(format!("the job's pod failed: {reason}"));
            }
            if job.is_none() {
                return JobError::Retryable(format!("job {name} was deleted"));
            }
            if let Some((reason, message)) = job_failure
                && (pod.is_none() || Instant::now() >= settle)
            {
                return JobError::Retryable(format!(
                    "job failed without a result: {reason}: {message}"
                ));
            }
            if Instant::now() >= settle {
                return JobError::Retryable(format!(
                    "job {name} ended its log without a result and its pod's status did not settle"
                ));
            }
            tokio::time::sleep(self.settings.poll_interval).await;
        }
    }

    /// When the runner stops waiting for the cluster to end the job: its deadline from the
    /// Job's creation, plus slack.
    fn hard_deadline(&self, job: &Job, timeout: Duration) -> Instant {
        let limit = timeout + self.settings.deadline_slack;
        let created_ms = job
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|time| time.0.as_millisecond());
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let elapsed = created_ms
            .map(|created| Duration::from_millis(u64::try_from(now_ms - created).unwrap_or(0)))
            .unwrap_or(Duration::ZERO);
        Instant::now() + limit.saturating_sub(elapsed)
    }

    async fn delete_job(
        &self,
        jobs: &Api<Job>,
        name: &str,
        params: DeleteParams,
    ) -> Result<(), JobError> {
        match jobs.delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(error) => Err(kube_error("deleting the job", error)),
        }
    }

    /// Deletes the Job (its pods go in the background) and waits until it is gone, so one of
    /// the same name can be created.
    async fn delete_and_wait(
        &self,
        jobs: &Api<Job>,
        name: &str,
        uid: &str,
    ) -> Result<(), JobError> {
        self.delete_job(jobs, name, DeleteParams::background())
            .await?;
        let deadline = Instant::now() + DELETE_WAIT;
        loop {
            match jobs.get_opt(name).await {
                Ok(None) => return Ok(()),
                Ok(Some(job)) if job.metadata.uid.as_deref() != Some(uid) => return Ok(()),
                Ok(Some(_)) => {}
                Err(error) => return Err(kube_error("reading the job", error)),
            }
            if Instant::now() >= deadline {
                return Err(JobError::Retryable(format!(
                    "job {name} is still being deleted"
                )));
            }
            tokio::time::sleep(self.settings.poll_interval).await;
        }
    }
}

#[async_trait]
impl JobRunner for KubernetesRunner {
    async fn run(
        &self,
        request: &JobRequest,
        lines: mpsc::UnboundedSender<JobLine>,
    ) -> Result<AgentResult, JobError> {
        let mut manifest = self.job(request)?;
        let task_id = &request.task_id;
        let namespace = self.namespace(task_id);
        self.ensure_namespace(task_id).await?;
        self.apply(&namespace, NETWORK_POLICY, &self.network_policy(task_id))
            .await?;
        self.apply(&namespace, SECRET, &self.secret(task_id))
            .await?;
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &namespace);
        let mut restarted = false;
        loop {
            let (job, created) = self.create_or_get(&jobs, &manifest, &request.name).await?;
            let ended_before = !created && finished(&job).is_some();
            let first_index = job
                .metadata
                .annotations
                .as_ref()
                .and_then(|annotations| annotations.get(FIRST_INDEX_ANNOTATION))
                .and_then(|index| index.parse().ok())
                .unwrap_or(0);
            let mut parser = OutputParser::starting_at(first_index);
            match self
                .follow(&jobs, &job, request.timeout, &mut parser, &lines)
                .await
            {
                Ok(result) => return Ok(result),
                Err(JobError::Retryable(message)) if ended_before && !restarted => {
                    // Found already ended without a result (its follower reported that
                    // before): run it again, as the retry means, numbering its lines after
                    // the ones just replayed.
                    tracing::info!(job = %request.name, %message, "the job had ended without a result; starting it again");
                    let uid = job.metadata.uid.clone().unwrap_or_default();
                    self.delete_and_wait(&jobs, &request.name, &uid).await?;
                    manifest
                        .metadata
                        .annotations
                        .get_or_insert_with(BTreeMap::new)
                        .insert(
                            FIRST_INDEX_ANNOTATION.to_owned(),
                            parser.next_index().to_string(),
                        );
                    restarted = true;
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn cancel(&self, task_id: &str, name: &str) -> Result<(), JobError> {
        check_job_name(name)?;
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &self.namespace(task_id));
        self.delete_job(&jobs, name, DeleteParams::foreground())
            .await
    }

    async fn cleanup(&self, task_id: &str) -> Result<(), JobError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        match api
            .delete(&self.namespace(task_id), &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(error) => Err(kube_error("deleting the task namespace", error)),
        }
    }
}

enum LogEnd {
    Result(AgentResult),
    /// The container has not started (the API answers 400 until it does).
    NotReady,
    Eof,
}

/// Reads the pod's log from the start, skipping the `seen` lines a previous stream delivered.
async fn read_log(
    pods: &Api<Pod>,
    pod: &str,
    seen: &mut u64,
    parser: &mut OutputParser,
    lines: &mpsc::UnboundedSender<JobLine>,
) -> Result<LogEnd, kube::Error> {
    let params = LogParams {
        container: Some(CONTAINER.to_owned()),
        follow: true,
        ..LogParams::default()
    };
    let stream = match pods.log_stream(pod, &params).await {
        Ok(stream) => stream,
        Err(kube::Error::Api(status)) if status.code == 400 => return Ok(LogEnd::NotReady),
        Err(error) => return Err(error),
    };
    let mut stream = std::pin::pin!(stream);
    let mut index = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        // Bytes, not `lines()`: one line of invalid UTF-8 must not end the stream.
        let read = stream
            .read_until(b'\n', &mut line)
            .await
            .map_err(kube::Error::ReadEvents)?;
        if read == 0 {
            return Ok(LogEnd::Eof);
        }
        if line.last() != Some(&b'\n') {
            // A last line without its newline: the container ended mid-line, or the stream
            // broke. Counted only once complete, so a reconnect reads it whole.
            let text = String::from_utf8_lossy(&line).into_owned();
            if let Some(result) = parser.line(&text, lines) {
                return Ok(LogEnd::Result(result));
            }
            return Ok(LogEnd::Eof);
        }
        index += 1;
        if index <= *seen {
            continue;
        }
        *seen = index;
        let text = String::from_utf8_lossy(&line).into_owned();
        if let Some(result) = parser.line(&text, lines) {
            return Ok(LogEnd::Result(result));
        }
    }
}

/// The Job's `Complete` or `Failed` condition: (complete, reason, message).
fn finished(job: &Job) -> Option<(bool, String, String)> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.status == "True" && (c.type_ == "Complete" || c.type_ == "Failed"))
        .map(|c| {
            (
                c.type_ == "Complete",
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

fn waiting_reason(pod: &Pod) -> Option<(String, String)> {
    let waiting = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|status| status.name == CONTAINER)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?;
    Some((
        waiting.reason.clone().unwrap_or_default(),
        waiting.message.clone().unwrap_or_default(),
    ))
}

fn terminated(pod: Option<&Pod>) -> Option<ContainerStateTerminated> {
    pod?.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|status| status.name == CONTAINER)?
        .state
        .as_ref()?
        .terminated
        .clone()
}

fn timed_out(timeout: Duration) -> JobError {
    JobError::Retryable(format!(
        "job timed out after {}s",
        timeout.as_secs_f64().ceil()
    ))
}

fn ip_block(cidr: &str, except: Vec<String>) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: cidr.to_owned(),
            except: (!except.is_empty()).then_some(except),
        }),
        ..NetworkPolicyPeer::default()
    }
}

/// Classifies an API error: what a person must fix (refused manifests, missing permissions)
/// is permanent; the rest (conflicts, overload, the network) may pass.
fn kube_error(what: &str, error: kube::Error) -> JobError {
    match error {
        kube::Error::Api(status) => {
            let message = format!(
                "{what}: {} ({} {})",
                status.message, status.code, status.reason
            );
            let terminating = status.message.contains("being terminated");
            match status.code {
                400 | 403 | 404 | 405 | 415 | 422 if !terminating => JobError::Permanent(message),
                _ => JobError::Retryable(message),
            }
        }
        other => JobError::Retryable(format!("{what}: {other}")),
    }
}

/// `text` as a DNS label: lower case, `[a-z0-9-]`, at most 63 characters (a hash of the whole
/// keeps truncated names distinct).
fn dns_label(text: &str) -> String {
    let mapped: String = text
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_matches('-');
    shorten(trimmed, text, |c| c == '-')
}

/// `text` as a label value: `[A-Za-z0-9._-]`, alphanumeric at both ends, at most 63.
fn label_value(text: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    shorten(trimmed, text, |c| !c.is_ascii_alphanumeric())
}

fn shorten(text: &str, original: &str, trim: impl Fn(char) -> bool + Copy) -> String {
    if text.is_empty() {
        return format!("x{:08x}", fnv1a(original) as u32);
    }
    if text.len() <= 63 {
        return text.to_owned();
    }
    let head = text[..54].trim_end_matches(trim);
    format!("{head}-{:08x}", fnv1a(original) as u32)
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_dns_labels() {
        assert_eq!(
            dns_label("mainloop-task-0123abcd"),
            "mainloop-task-0123abcd"
        );
        assert_eq!(dns_label("Mainloop_Task-ABC"), "mainloop-task-abc");
        let long = dns_label(&format!("mainloop-task-{}", "a".repeat(80)));
        assert!(long.len() <= 63, "{long}");
        assert_ne!(
            long,
            dns_label(&format!("mainloop-task-{}b", "a".repeat(80)))
        );
        assert_eq!(label_value("0123-ABCD_x."), "0123-ABCD_x");
        assert!(dns_label("---").starts_with('x'));
    }
}
