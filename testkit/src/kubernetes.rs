//! A fake Kubernetes API server, faithful at the wire for what mainloop's job runner uses.
//!
//! This module owns:
//! - an HTTP server answering the REST paths that `kube::Api<T>` calls for `v1` namespaces,
//!   secrets and pods, `batch/v1` jobs and `networking.k8s.io/v1` network policies: create,
//!   get, list (with equality-based label selectors), replace, patch (JSON merge patch,
//!   strategic merge patch approximated as a JSON merge patch, and server-side apply for a
//!   single field manager) and delete, plus the pod `log` subresource, streamed while the
//!   container runs when `follow=true`;
//! - what the real API server adds: `uid`, `creationTimestamp`, `resourceVersion`,
//!   `generation`, the defaults the runner may read back, and `Status` bodies with the real
//!   reasons and codes (`AlreadyExists` 409, `NotFound` 404, `Invalid` 422, `Forbidden` 403);
//! - strictness where it matters: object names are DNS labels/subdomains, labels are valid,
//!   secret data is base64, a Job needs containers with images and a `restartPolicy` of `Never`
//!   or `OnFailure`, objects in a missing namespace are refused, and namespaces labelled
//!   `pod-security.kubernetes.io/enforce` get Pod Security admission (`baseline` and
//!   `restricted` levels);
//! - a Job controller and a pluggable [`Kubelet`]: creating a Job creates its Pod (labels
//!   `job-name`, `batch.kubernetes.io/job-name`, `controller-uid`, …) and hands it to the
//!   kubelet, whose progress becomes the pod's phase and container state and the Job's
//!   conditions (`Complete`, `Failed` with `BackoffLimitExceeded` or `DeadlineExceeded`). The
//!   default [`ProcessKubelet`] really runs the container as a local process;
//! - inspection for tests: stored objects, pod logs, every request, and waits on changes.
//!
//! Deliberate differences from a real cluster, each simpler and none more permissive:
//! - Pod Security admission rejects a *Job* whose pod template violates the namespace's
//!   level with 403 (`jobs.batch "x" is forbidden: violates PodSecurity "restricted:latest":
//!   …`). A real cluster accepts the Job and only refuses its pods (the Job then shows a
//!   `FailedCreate` event and never starts); failing at once is easier to see in a test.
//! - Deletion is immediate: no finalizers, no `Terminating` phase, no graceful pod
//!   termination beyond what the kubelet does when told to stop.
//! - One pod per Job and no pod retries (`backoffLimit` > 0 is accepted but not acted on);
//!   only the first container of a pod runs. No watch, no discovery, no
//!   `ttlSecondsAfterFinished` garbage collection, no `dryRun`.
//! - Server-side apply replaces the object's spec/data with the applied configuration
//!   (correct when one field manager owns the object, as mainloop's runner does).

use crate::server::{self, Server};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How logs and errors name this fake.
const NAME: &str = "the fake Kubernetes API";

use anyhow::Context as _;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The real API server refuses request bodies above about 3 MiB.
const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
/// The real limit on a Secret's data.
const MAX_SECRET_BYTES: usize = 1024 * 1024;
/// What `terminationMessagePolicy: FallbackToLogsOnError` keeps of the log, as the kubelet.
const TERMINATION_LOG_LINES: usize = 80;
const TERMINATION_LOG_BYTES: usize = 2048;
/// The label Pod Security admission reads on a namespace.
const PSA_ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";
const PSA_ENFORCE_VERSION_LABEL: &str = "pod-security.kubernetes.io/enforce-version";

// ---------------------------------------------------------------------------------------------
// The handle
// ---------------------------------------------------------------------------------------------

/// A running fake Kubernetes API server. Clones share one server, which stops (and kills every
/// pod's process) when the last clone is dropped or on [`FakeKubernetes::shutdown`].
#[derive(Clone)]
pub struct FakeKubernetes {
    handle: Arc<ServerHandle>,
}

/// Owned only by [`FakeKubernetes`] clones (the server's tasks hold [`FakeState`]), so its drop
/// marks the moment no test can inspect the server any more.
struct ServerHandle {
    state: Arc<FakeState>,
    server: Server,
}

struct FakeState {
    stop: CancellationToken,
    store: Mutex<Store>,
    requests: Mutex<Vec<RecordedRequest>>,
    /// Bumped on every change (objects, logs, requests) so waiters need no polling.
    changed: watch::Sender<u64>,
    kubelet: Arc<dyn Kubelet>,
    /// Cancelled by [`FakeKubernetes::cut_log_streams`], then replaced.
    log_cut: Mutex<CancellationToken>,
}

impl FakeState {
    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn record(&self, request: RecordedRequest) {
        lock(&self.requests).push(request);
        self.bump();
    }
}

#[derive(Default)]
struct Store {
    resource_version: u64,
    /// Keyed by kind, namespace ("" for namespaces themselves) and name.
    objects: BTreeMap<(Kind, String, String), Value>,
    /// Pods the kubelet was handed, by namespace and name.
    pods: HashMap<(String, String), PodRuntime>,
}

impl Store {
    fn next_version(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&(kind, namespace.to_owned(), name.to_owned()))
    }

    fn get_mut(&mut self, kind: Kind, namespace: &str, name: &str) -> Option<&mut Value> {
        self.objects
            .get_mut(&(kind, namespace.to_owned(), name.to_owned()))
    }

    /// The object if it is still the one with `uid` (a deleted and re-created object with the
    /// same name is another object).
    fn get_mut_uid(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Option<&mut Value> {
        self.get_mut(kind, namespace, name)
            .filter(|object| object.pointer("/metadata/uid").and_then(Value::as_str) == Some(uid))
    }

    fn namespace_exists(&self, namespace: &str) -> bool {
        self.get(Kind::Namespace, "", namespace).is_some()
    }

    /// Removes a pod object and its runtime, returning the runtime so the caller can stop it.
    fn remove_pod(&mut self, namespace: &str, name: &str) -> Option<PodRuntime> {
        self.objects
            .remove(&(Kind::Pod, namespace.to_owned(), name.to_owned()));
        self.pods.remove(&(namespace.to_owned(), name.to_owned()))
    }
}

struct PodRuntime {
    uid: String,
    log: Arc<watch::Sender<LogState>>,
    stop: CancellationToken,
    /// The container's start (or its failure to) has been reported: logs may be read.
    started: bool,
    /// Why the container is not running yet, as in `state.waiting.reason`.
    waiting: Option<String>,
}

impl PodRuntime {
    fn stop(&self) {
        self.stop.cancel();
        close_log(&self.log);
    }
}

#[derive(Default)]
struct LogState {
    bytes: Vec<u8>,
    closed: bool,
}

fn close_log(log: &watch::Sender<LogState>) {
    log.send_if_modified(|state| {
        let changed = !state.closed;
        state.closed = true;
        changed
    });
}

/// Configures a [`FakeKubernetes`] before it starts.
pub struct FakeKubernetesBuilder {
    addr: SocketAddr,
    kubelet: Arc<dyn Kubelet>,
}

impl Default for FakeKubernetesBuilder {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            kubelet: Arc::new(ProcessKubelet::new()),
        }
    }
}

impl fmt::Debug for FakeKubernetesBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeKubernetesBuilder")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FakeKubernetesBuilder {
    /// Where to listen; port 0 picks a free port.
    #[must_use]
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Who runs the pods: a [`ProcessKubelet`] (the default, with no images mapped) or any
    /// [`Kubelet`], e.g. a closure `|pod: PodHandle| async move { … PodExit::… }`.
    #[must_use]
    pub fn kubelet(mut self, kubelet: impl Kubelet) -> Self {
        self.kubelet = Arc::new(kubelet);
        self
    }

    /// Binds and starts serving.
    ///
    /// # Errors
    /// If the address cannot be bound.
    pub async fn start(self) -> anyhow::Result<FakeKubernetes> {
        let (listener, addr) = server::bind(NAME, self.addr).await?;
        let stop = CancellationToken::new();
        let (changed, _) = watch::channel(0);
        let state = Arc::new(FakeState {
            stop: stop.clone(),
            store: Mutex::new(Store::default()),
            requests: Mutex::new(Vec::new()),
            changed,
            kubelet: self.kubelet,
            log_cut: Mutex::new(CancellationToken::new()),
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&state));
        let server = Server::serve(NAME, listener, addr, app, stop);
        Ok(FakeKubernetes {
            handle: Arc::new(ServerHandle { state, server }),
        })
    }
}

impl FakeKubernetes {
    pub fn builder() -> FakeKubernetesBuilder {
        FakeKubernetesBuilder::default()
    }

    /// Starts on `127.0.0.1` at a free port with a [`ProcessKubelet`] that has no images mapped
    /// (containers with an explicit `command` still run).
    ///
    /// # Errors
    /// If no port can be bound.
    pub async fn start() -> anyhow::Result<FakeKubernetes> {
        Self::builder().start().await
    }

    pub fn addr(&self) -> SocketAddr {
        self.handle.server.addr()
    }

    /// `http://HOST:PORT`, the cluster URL for `kube::Config::new`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.handle.server.addr())
    }

    /// Stored objects of `kind` in `namespace`, ordered by name. `kind` is the resource
    /// (`"jobs"`) or the kind (`"Job"`), case-insensitive; the namespace is ignored for
    /// namespaces. An unknown kind has no objects.
    pub fn objects(&self, kind: &str, namespace: &str) -> Vec<Value> {
        let Some(kind) = Kind::parse(kind) else {
            return Vec::new();
        };
        let namespace = if kind.namespaced() { namespace } else { "" };
        lock(&self.handle.state.store)
            .objects
            .iter()
            .filter(|((k, ns, _), _)| *k == kind && ns == namespace)
            .map(|(_, object)| object.clone())
            .collect()
    }

    /// One stored object, as [`objects`](FakeKubernetes::objects) names kinds.
    pub fn object(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let kind = Kind::parse(kind)?;
        let namespace = if kind.namespaced() { namespace } else { "" };
        lock(&self.handle.state.store)
            .get(kind, namespace, name)
            .cloned()
    }

    pub fn namespaces(&self) -> Vec<Value> {
        self.objects("namespaces", "")
    }

    /// The pods the Job controller created for `job` (there is at most one per Job).
    pub fn pods_of_job(&self, namespace: &str, job: &str) -> Vec<Value> {
        self.objects("pods", namespace)
            .into_iter()
            .filter(|pod| {
                pod.pointer("/metadata/labels/batch.kubernetes.io~1job-name")
                    .and_then(Value::as_str)
                    == Some(job)
            })
            .collect()
    }

    /// Everything the pod's container wrote so far (stdout and stderr, line by line).
    pub fn pod_log(&self, namespace: &str, pod: &str) -> Option<String> {
        let store = lock(&self.handle.state.store);
        let runtime = store.pods.get(&(namespace.to_owned(), pod.to_owned()))?;
        Some(String::from_utf8_lossy(&runtime.log.borrow().bytes).into_owned())
    }

    /// Every request received since the start or the last
    /// [`clear_requests`](FakeKubernetes::clear_requests), in the order they were answered.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.handle.state.requests).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.handle.state.requests).clear();
    }

    /// Breaks every log stream now open, as a dropped connection between the API server and
    /// the kubelet would: the client sees its response body fail. Streams opened later work.
    pub fn cut_log_streams(&self) {
        let mut cut = lock(&self.handle.state.log_cut);
        cut.cancel();
        *cut = CancellationToken::new();
    }

    /// Waits until `check` returns `Some`, re-checking after every change to the fake (an
    /// object, a log line, a request).
    ///
    /// # Errors
    /// On timeout, naming `what` and the requests received.
    pub async fn wait_until<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&FakeKubernetes) -> Option<T>,
    ) -> anyhow::Result<T> {
        let mut changed = self.handle.state.changed.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            loop {
                changed.mark_unchanged();
                if let Some(value) = check(self) {
                    return Ok(value);
                }
                if changed.changed().await.is_err() {
                    anyhow::bail!("the fake Kubernetes API stopped while waiting for {what}");
                }
            }
        })
        .await;
        match waited {
            Ok(result) => result,
            Err(_) => {
                let summary: Vec<String> = self
                    .requests()
                    .iter()
                    .map(|r| format!("{} {} -> {}", r.method, r.path, r.status))
                    .collect();
                anyhow::bail!(
                    "timed out after {timeout:?} waiting for {what}; requests: {summary:#?}"
                )
            }
        }
    }

    /// Waits for an object to exist and returns it.
    ///
    /// # Errors
    /// On timeout.
    pub async fn wait_for_object(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        self.wait_until(timeout, &format!("{kind} {namespace}/{name}"), |fake| {
            fake.object(kind, namespace, name)
        })
        .await
    }

    /// Waits for an object to be gone.
    ///
    /// # Errors
    /// On timeout.
    pub async fn wait_for_gone(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        self.wait_until(
            timeout,
            &format!("{kind} {namespace}/{name} to be deleted"),
            |fake| fake.object(kind, namespace, name).is_none().then_some(()),
        )
        .await
    }

    /// Waits for the pod of `job` to reach `phase` (`Pending`, `Running`, `Succeeded`,
    /// `Failed`) and returns it.
    ///
    /// # Errors
    /// On timeout.
    pub async fn wait_for_pod_phase(
        &self,
        namespace: &str,
        job: &str,
        phase: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        self.wait_until(
            timeout,
            &format!("the pod of job {namespace}/{job} to be {phase}"),
            |fake| {
                fake.pods_of_job(namespace, job)
                    .into_iter()
                    .find(|pod| pod.pointer("/status/phase").and_then(Value::as_str) == Some(phase))
            },
        )
        .await
    }

    /// Stops the server now, killing every pod's process, and waits for it to close its
    /// socket.
    pub async fn shutdown(&self) {
        self.handle.server.shutdown().await;
    }
}

impl fmt::Debug for FakeKubernetes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeKubernetes")
            .field("base_url", &self.base_url())
            .finish_non_exhaustive()
    }
}

/// One request the fake answered.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub content_type: Option<String>,
    /// The parsed body, or `Null` if there was none or it was not JSON.
    pub body: Value,
    pub status: u16,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent, so a panic elsewhere (a failing
    // test) does not make it unusable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Kinds and routes
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Namespace,
    Secret,
    Pod,
    Job,
    NetworkPolicy,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Namespace,
        Kind::Secret,
        Kind::Pod,
        Kind::Job,
        Kind::NetworkPolicy,
    ];

    fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Secret => "secrets",
            Kind::Pod => "pods",
            Kind::Job => "jobs",
            Kind::NetworkPolicy => "networkpolicies",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Secret => "Secret",
            Kind::Pod => "Pod",
            Kind::Job => "Job",
            Kind::NetworkPolicy => "NetworkPolicy",
        }
    }

    fn group(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Secret | Kind::Pod => "",
            Kind::Job => "batch",
            Kind::NetworkPolicy => "networking.k8s.io",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Secret | Kind::Pod => "v1",
            Kind::Job => "batch/v1",
            Kind::NetworkPolicy => "networking.k8s.io/v1",
        }
    }

    fn namespaced(self) -> bool {
        self != Kind::Namespace
    }

    /// The resource as the real server names it in messages: `jobs.batch`, `secrets`.
    fn qualified_plural(self) -> String {
        match self.group() {
            "" => self.plural().to_owned(),
            group => format!("{}.{group}", self.plural()),
        }
    }

    /// The kind as the real server names it in validation messages: `Job.batch`, `Secret`.
    fn qualified_kind(self) -> String {
        match self.group() {
            "" => self.kind().to_owned(),
            group => format!("{}.{group}", self.kind()),
        }
    }

    fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| {
            kind.plural().eq_ignore_ascii_case(name) || kind.kind().eq_ignore_ascii_case(name)
        })
    }
}

struct Route {
    kind: Kind,
    /// Empty for namespaces themselves.
    namespace: String,
    name: Option<String>,
    /// The pod `log` subresource.
    log: bool,
}

fn route(path: &str) -> Option<Route> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group_version, rest): (&str, &[&str]) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("v1", rest),
        ["apis", group, version, rest @ ..] => match (*group, *version) {
            ("batch", "v1") => ("batch/v1", rest),
            ("networking.k8s.io", "v1") => ("networking.k8s.io/v1", rest),
            _ => return None,
        },
        _ => return None,
    };
    let namespaced = |namespace: &str, resource: &str| {
        Kind::ALL.into_iter().find(|kind| {
            kind.namespaced()
                && kind.plural() == resource
                && kind.api_version() == group_version
                && !namespace.is_empty()
        })
    };
    match rest {
        ["namespaces"] if group_version == "v1" => Some(Route {
            kind: Kind::Namespace,
            namespace: String::new(),
            name: None,
            log: false,
        }),
        ["namespaces", name] if group_version == "v1" => Some(Route {
            kind: Kind::Namespace,
            namespace: String::new(),
            name: Some((*name).to_owned()),
            log: false,
        }),
        ["namespaces", namespace, resource] => Some(Route {
            kind: namespaced(namespace, resource)?,
            namespace: (*namespace).to_owned(),
            name: None,
            log: false,
        }),
        ["namespaces", namespace, resource, name] => Some(Route {
            kind: namespaced(namespace, resource)?,
            namespace: (*namespace).to_owned(),
            name: Some((*name).to_owned()),
            log: false,
        }),
        ["namespaces", namespace, "pods", name, "log"] if group_version == "v1" => Some(Route {
            kind: Kind::Pod,
            namespace: (*namespace).to_owned(),
            name: Some((*name).to_owned()),
            log: true,
        }),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Errors: the real `Status` bodies
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct ApiError {
    code: StatusCode,
    reason: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    fn kind_details(kind: Kind, name: &str) -> Value {
        let mut details = json!({"name": name, "kind": kind.plural()});
        if !kind.group().is_empty() {
            details["group"] = json!(kind.group());
        }
        details
    }

    fn not_found(kind: Kind, name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", kind.qualified_plural()),
        )
        .with_details(Self::kind_details(kind, name))
    }

    fn already_exists(kind: Kind, name: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", kind.qualified_plural()),
        )
        .with_details(Self::kind_details(kind, name))
    }

    fn conflict(kind: Kind, name: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                kind.qualified_plural()
            ),
        )
        .with_details(Self::kind_details(kind, name))
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    fn forbidden(kind: Kind, name: &str, why: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("{} \"{name}\" is forbidden: {why}", kind.qualified_plural()),
        )
        .with_details(Self::kind_details(kind, name))
    }

    fn invalid(kind: Kind, name: &str, causes: &[Cause]) -> Self {
        let listed: Vec<String> = causes.iter().map(Cause::to_string).collect();
        let summary = match listed.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        let mut details = json!({
            "name": name,
            "kind": kind.kind(),
            "causes": causes.iter().map(|cause| json!({
                "reason": cause.reason,
                "message": cause.to_string(),
                "field": cause.field,
            })).collect::<Vec<_>>(),
        });
        if !kind.group().is_empty() {
            details["group"] = json!(kind.group());
        }
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{} \"{name}\" is invalid: {summary}", kind.qualified_kind()),
        )
        .with_details(details)
    }

    fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    fn no_route() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {content_type:?}; the fake does not apply JSON patches)"
            ),
        )
    }

    fn too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            "the request is too large",
        )
    }

    fn body(&self) -> Value {
        let mut body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some(details) = &self.details {
            body["details"] = details.clone();
        }
        body
    }
}

/// One reason an object is invalid, formatted like the real server's field errors.
#[derive(Debug)]
struct Cause {
    field: String,
    reason: &'static str,
    detail: String,
}

impl Cause {
    fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueRequired",
            detail: format!("Required value: {}", detail.into()),
        }
    }

    fn invalid(field: impl Into<String>, value: &Value, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueInvalid",
            detail: format!("Invalid value: {value}: {}", detail.into()),
        }
    }

    fn unsupported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Self {
        let supported: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
        Self {
            field: field.into(),
            reason: "FieldValueNotSupported",
            detail: format!(
                "Unsupported value: {value}: supported values: {}",
                supported.join(", ")
            ),
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.detail)
    }
}

// ---------------------------------------------------------------------------------------------
// The HTTP handler
// ---------------------------------------------------------------------------------------------

enum Answer {
    Json(StatusCode, Value),
    Stream(Body),
}

async fn handle(State(state): State<Arc<FakeState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    let mut record = RecordedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        content_type,
        body: Value::Null,
        status: 0,
    };
    let answer = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Err(_) => Err(ApiError::too_large()),
        Ok(bytes) => {
            record.body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            dispatch(&state, &parts.method, &parts.uri, &parts.headers, &bytes)
        }
    };
    let (status, body, content_type) = match answer {
        Ok(Answer::Json(status, value)) => {
            (status, Body::from(value.to_string()), "application/json")
        }
        Ok(Answer::Stream(body)) => (StatusCode::OK, body, "text/plain"),
        Err(error) => (
            error.code,
            Body::from(error.body().to_string()),
            "application/json",
        ),
    };
    record.status = status.as_u16();
    tracing::debug!(
        method = %record.method,
        path = %record.path,
        status = record.status,
        "fake Kubernetes API answered"
    );
    state.record(record);
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

fn dispatch(
    state: &Arc<FakeState>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Result<Answer, ApiError> {
    let route = route(uri.path()).ok_or_else(ApiError::no_route)?;
    let query = parse_query(uri.query());
    if query
        .get("watch")
        .is_some_and(|value| value == "true" || value == "1")
    {
        return Err(ApiError::bad_request(
            "the fake Kubernetes API does not support watch",
        ));
    }
    if query.contains_key("dryRun") {
        return Err(ApiError::bad_request(
            "the fake Kubernetes API does not support dryRun",
        ));
    }
    if route.log {
        let name = route.name.as_deref().unwrap_or_default();
        return if method == Method::GET {
            pod_log(state, &route.namespace, name, &query)
        } else {
            Err(ApiError::method_not_allowed())
        };
    }
    let kind = route.kind;
    let namespace = route.namespace.as_str();
    match (method, route.name.as_deref()) {
        (&Method::GET, None) => list(state, kind, namespace, &query),
        (&Method::POST, None) => {
            let object = json_body(bytes)?;
            create(state, kind, namespace, object).map(|v| Answer::Json(StatusCode::CREATED, v))
        }
        (&Method::GET, Some(name)) => lock(&state.store)
            .get(kind, namespace, name)
            .cloned()
            .map(|v| Answer::Json(StatusCode::OK, v))
            .ok_or_else(|| ApiError::not_found(kind, name)),
        (&Method::PUT, Some(name)) => {
            let object = json_body(bytes)?;
            replace(state, kind, namespace, name, object).map(|v| Answer::Json(StatusCode::OK, v))
        }
        (&Method::PATCH, Some(name)) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default();
            let media = content_type
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            match media.as_str() {
                "application/apply-patch+yaml" => {
                    if !query.contains_key("fieldManager") {
                        return Err(ApiError::bad_request(
                            "PATCH requests with the apply content type require fieldManager",
                        ));
                    }
                    let object = json_body(bytes).map_err(|_| {
                        ApiError::bad_request(
                            "the fake Kubernetes API reads apply patches as JSON only",
                        )
                    })?;
                    apply(state, kind, namespace, name, object)
                        .map(|(status, v)| Answer::Json(status, v))
                }
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    let patch = json_body(bytes)?;
                    merge(state, kind, namespace, name, &patch)
                        .map(|v| Answer::Json(StatusCode::OK, v))
                }
                other => Err(ApiError::unsupported_media_type(other)),
            }
        }
        (&Method::DELETE, Some(name)) => {
            let options: Value = if bytes.is_empty() {
                Value::Null
            } else {
                json_body(bytes)?
            };
            let policy = query
                .get("propagationPolicy")
                .cloned()
                .or_else(|| {
                    options
                        .get("propagationPolicy")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| "Background".to_owned());
            if !["Background", "Foreground", "Orphan"].contains(&policy.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \"{policy}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
                )));
            }
            delete(state, kind, namespace, name, &policy).map(|v| Answer::Json(StatusCode::OK, v))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    let Some(query) = query else {
        return HashMap::new();
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_body(bytes: &Bytes) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|error| {
        ApiError::bad_request(format!("the request body is not valid JSON: {error}"))
    })?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body is not a JSON object",
        ));
    }
    Ok(value)
}

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

fn list(
    state: &FakeState,
    kind: Kind,
    namespace: &str,
    query: &HashMap<String, String>,
) -> Result<Answer, ApiError> {
    if query.get("fieldSelector").is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_request(
            "the fake Kubernetes API does not support fieldSelector",
        ));
    }
    let selector = match query.get("labelSelector") {
        Some(text) => LabelSelector::parse(text)?,
        None => LabelSelector::default(),
    };
    let store = lock(&state.store);
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((k, ns, _), object)| {
            *k == kind && ns == namespace && selector.matches(object.pointer("/metadata/labels"))
        })
        .map(|(_, object)| {
            // Items of a real list carry neither kind nor apiVersion.
            let mut item = object.clone();
            if let Some(map) = item.as_object_mut() {
                map.remove("kind");
                map.remove("apiVersion");
            }
            item
        })
        .collect();
    Ok(Answer::Json(
        StatusCode::OK,
        json!({
            "kind": format!("{}List", kind.kind()),
            "apiVersion": kind.api_version(),
            "metadata": {"resourceVersion": store.resource_version.to_string()},
            "items": items,
        }),
    ))
}

fn create(
    state: &Arc<FakeState>,
    kind: Kind,
    namespace: &str,
    mut object: Value,
) -> Result<Value, ApiError> {
    if kind == Kind::Pod {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the fake Kubernetes API creates pods only for Jobs",
        ));
    }
    check_type(kind, &mut object)?;
    let name = match object.pointer("/metadata/name").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => match object
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
        {
            Some(prefix) => format!("{prefix}{}", random_suffix()),
            None => {
                return Err(ApiError::invalid(
                    kind,
                    "",
                    &[Cause::required(
                        "metadata.name",
                        "name or generateName is required",
                    )],
                ));
            }
        },
    };
    set_path(&mut object, &["metadata", "name"], json!(name));
    check_namespace_field(kind, namespace, &mut object)?;
    normalize(kind, &mut object)?;
    validate(kind, &name, &object)?;

    let mut store = lock(&state.store);
    if kind.namespaced() && !store.namespace_exists(namespace) {
        return Err(ApiError::not_found(Kind::Namespace, namespace));
    }
    let scope = if kind.namespaced() { namespace } else { "" };
    if store.get(kind, scope, &name).is_some() {
        return Err(ApiError::already_exists(kind, &name));
    }
    let uid = uuid::Uuid::new_v4().to_string();
    defaults(kind, &name, &uid, &mut object);
    if kind == Kind::Job {
        admit_pod_security(
            &store,
            namespace,
            kind,
            &name,
            object.pointer("/spec/template/spec"),
        )?;
    }
    let version = store.next_version();
    let metadata = object
        .as_object_mut()
        .and_then(|map| map.get_mut("metadata"))
        .and_then(Value::as_object_mut);
    if let Some(metadata) = metadata {
        metadata.insert("uid".into(), json!(uid));
        metadata.insert(
            "creationTimestamp".into(),
            json!(rfc3339(SystemTime::now())),
        );
        metadata.insert("resourceVersion".into(), json!(version));
        if kind.namespaced() {
            metadata.insert("namespace".into(), json!(namespace));
        }
        if matches!(kind, Kind::Job | Kind::NetworkPolicy) {
            metadata.insert("generation".into(), json!(1));
        }
    }
    store
        .objects
        .insert((kind, scope.to_owned(), name.clone()), object.clone());
    drop(store);
    if kind == Kind::Job {
        tokio::spawn(run_job(Arc::clone(state), namespace.to_owned(), name, uid));
    }
    state.bump();
    Ok(object)
}

/// `apiVersion` and `kind`, when given, must be the endpoint's; the stored object has both.
fn check_type(kind: Kind, object: &mut Value) -> Result<(), ApiError> {
    if let Some(version) = object.get("apiVersion").and_then(Value::as_str)
        && version != kind.api_version()
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({version}) does not match the expected API version ({})",
            kind.api_version()
        )));
    }
    if let Some(given) = object.get("kind").and_then(Value::as_str)
        && given != kind.kind()
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({given}) does not match the expected kind ({})",
            kind.kind()
        )));
    }
    set_path(object, &["apiVersion"], json!(kind.api_version()));
    set_path(object, &["kind"], json!(kind.kind()));
    Ok(())
}

fn check_namespace_field(kind: Kind, namespace: &str, object: &mut Value) -> Result<(), ApiError> {
    if !kind.namespaced() {
        return Ok(());
    }
    match object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
    {
        Some(given) if !given.is_empty() && given != namespace => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => Ok(()),
    }
}

/// What the API server converts on the way in: a Secret's `stringData` joins `data`.
fn normalize(kind: Kind, object: &mut Value) -> Result<(), ApiError> {
    if kind != Kind::Secret {
        return Ok(());
    }
    let Some(map) = object.as_object_mut() else {
        return Ok(());
    };
    if let Some(string_data) = map.remove("stringData") {
        let Value::Object(string_data) = string_data else {
            return Err(ApiError::bad_request("stringData must be an object"));
        };
        let data = map
            .entry("data")
            .or_insert_with(|| Value::Object(Map::new()));
        if !data.is_object() {
            *data = Value::Object(Map::new());
        }
        for (key, value) in string_data {
            let Some(text) = value.as_str() else {
                return Err(ApiError::bad_request(format!(
                    "stringData[{key}] must be a string"
                )));
            };
            data[key.as_str()] = json!(base64_encode(text.as_bytes()));
        }
    }
    if let Some(data) = map.get("data").and_then(Value::as_object) {
        for (key, value) in data {
            let valid = value.as_str().is_some_and(is_base64);
            if !valid {
                return Err(ApiError::bad_request(format!(
                    "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data in data[{key}]"
                )));
            }
        }
    }
    Ok(())
}

/// The defaults the real API server fills in that a client may read back.
fn defaults(kind: Kind, name: &str, uid: &str, object: &mut Value) {
    match kind {
        Kind::Namespace => {
            set_path(
                object,
                &["metadata", "labels", "kubernetes.io/metadata.name"],
                json!(name),
            );
            set_path(object, &["spec", "finalizers"], json!(["kubernetes"]));
            set_path(object, &["status", "phase"], json!("Active"));
        }
        Kind::Secret => {
            if object.get("type").is_none() {
                set_path(object, &["type"], json!("Opaque"));
            }
        }
        Kind::Job => {
            let spec_defaults = [
                ("backoffLimit", json!(6)),
                ("completions", json!(1)),
                ("parallelism", json!(1)),
                ("completionMode", json!("NonIndexed")),
                ("suspend", json!(false)),
                ("podReplacementPolicy", json!("TerminatingOrFailed")),
            ];
            for (field, value) in spec_defaults {
                if object.pointer(&format!("/spec/{field}")).is_none() {
                    set_path(object, &["spec", field], value);
                }
            }
            let selector_labels = [
                ("batch.kubernetes.io/controller-uid", uid),
                ("batch.kubernetes.io/job-name", name),
                ("controller-uid", uid),
                ("job-name", name),
            ];
            set_path(
                object,
                &["spec", "selector"],
                json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
            );
            for (key, value) in selector_labels {
                set_path(
                    object,
                    &["spec", "template", "metadata", "labels", key],
                    json!(value),
                );
            }
            // batch/v1 defaults a Job's labels to its template's when it has none.
            let has_labels = object
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .is_some_and(|labels| !labels.is_empty());
            if !has_labels
                && let Some(labels) = object.pointer("/spec/template/metadata/labels").cloned()
            {
                set_path(object, &["metadata", "labels"], labels);
            }
            if let Some(spec) = object.pointer_mut("/spec/template/spec") {
                pod_spec_defaults(spec);
            }
            set_path(object, &["status"], json!({}));
        }
        Kind::NetworkPolicy => {
            if object.pointer("/spec/policyTypes").is_none() {
                let mut types = vec![json!("Ingress")];
                if object.pointer("/spec/egress").is_some() {
                    types.push(json!("Egress"));
                }
                set_path(object, &["spec", "policyTypes"], Value::Array(types));
            }
            for direction in ["ingress", "egress"] {
                let rules = object
                    .pointer_mut(&format!("/spec/{direction}"))
                    .and_then(Value::as_array_mut);
                for rule in rules.into_iter().flatten() {
                    let ports = rule.get_mut("ports").and_then(Value::as_array_mut);
                    for port in ports.into_iter().flatten() {
                        if port.get("protocol").is_none() {
                            port["protocol"] = json!("TCP");
                        }
                    }
                }
            }
        }
        Kind::Pod => {}
    }
}

fn pod_spec_defaults(spec: &mut Value) {
    let spec_defaults = [
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
        ("securityContext", json!({})),
        ("terminationGracePeriodSeconds", json!(30)),
        ("restartPolicy", json!("Always")),
    ];
    for (field, value) in spec_defaults {
        if spec.get(field).is_none() {
            spec[field] = value;
        }
    }
    for list in ["initContainers", "containers"] {
        let containers = spec.get_mut(list).and_then(Value::as_array_mut);
        for container in containers.into_iter().flatten() {
            if container.get("imagePullPolicy").is_none() {
                let image = container
                    .get("image")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let tag = image.rsplit('/').next().unwrap_or_default();
                let pinned =
                    image.contains('@') || (tag.contains(':') && !tag.ends_with(":latest"));
                container["imagePullPolicy"] =
                    json!(if pinned { "IfNotPresent" } else { "Always" });
            }
            if container.get("terminationMessagePath").is_none() {
                container["terminationMessagePath"] = json!("/dev/termination-log");
            }
            if container.get("terminationMessagePolicy").is_none() {
                container["terminationMessagePolicy"] = json!("File");
            }
        }
    }
}

fn replace(
    state: &Arc<FakeState>,
    kind: Kind,
    namespace: &str,
    name: &str,
    mut object: Value,
) -> Result<Value, ApiError> {
    if kind == Kind::Pod {
        return Err(ApiError::method_not_allowed());
    }
    check_type(kind, &mut object)?;
    if object.pointer("/metadata/name").and_then(Value::as_str) != Some(name) {
        return Err(ApiError::bad_request(
            "the name of the object does not match the name on the URL",
        ));
    }
    check_namespace_field(kind, namespace, &mut object)?;
    normalize(kind, &mut object)?;
    validate(kind, name, &object)?;
    let given_version = object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut store = lock(&state.store);
    let scope = if kind.namespaced() { namespace } else { "" };
    let Some(existing) = store.get(kind, scope, name).cloned() else {
        return Err(ApiError::not_found(kind, name));
    };
    let current_version = existing
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str);
    if let Some(given) = &given_version
        && Some(given.as_str()) != current_version
    {
        return Err(ApiError::conflict(kind, name));
    }
    let updated = update_stored(&mut store, kind, scope, name, &existing, object)?;
    drop(store);
    state.bump();
    Ok(updated)
}

/// Server-side apply for one field manager: creates the object, or makes it the applied
/// configuration while keeping what the server owns (identity, status).
fn apply(
    state: &Arc<FakeState>,
    kind: Kind,
    namespace: &str,
    name: &str,
    mut object: Value,
) -> Result<(StatusCode, Value), ApiError> {
    if kind == Kind::Pod {
        return Err(ApiError::method_not_allowed());
    }
    if object.get("apiVersion").is_none() || object.get("kind").is_none() {
        return Err(ApiError::bad_request(
            "apiVersion and kind must be set in an apply patch",
        ));
    }
    if object.pointer("/metadata/name").and_then(Value::as_str) != Some(name) {
        return Err(ApiError::bad_request(
            "the name of the object does not match the name on the URL",
        ));
    }
    let scope = if kind.namespaced() { namespace } else { "" };
    let existing = lock(&state.store).get(kind, scope, name).cloned();
    let Some(existing) = existing else {
        return create(state, kind, namespace, object).map(|v| (StatusCode::CREATED, v));
    };
    check_type(kind, &mut object)?;
    check_namespace_field(kind, namespace, &mut object)?;
    normalize(kind, &mut object)?;
    validate(kind, name, &object)?;
    let mut store = lock(&state.store);
    let updated = update_stored(&mut store, kind, scope, name, &existing, object)?;
    drop(store);
    state.bump();
    Ok((StatusCode::OK, updated))
}

fn merge(
    state: &Arc<FakeState>,
    kind: Kind,
    namespace: &str,
    name: &str,
    patch: &Value,
) -> Result<Value, ApiError> {
    if kind == Kind::Pod {
        return Err(ApiError::method_not_allowed());
    }
    let scope = if kind.namespaced() { namespace } else { "" };
    let mut store = lock(&state.store);
    let Some(existing) = store.get(kind, scope, name).cloned() else {
        return Err(ApiError::not_found(kind, name));
    };
    let mut object = existing.clone();
    merge_patch(&mut object, patch);
    check_type(kind, &mut object)?;
    normalize(kind, &mut object)?;
    validate(kind, name, &object)?;
    let updated = update_stored(&mut store, kind, scope, name, &existing, object)?;
    drop(store);
    state.bump();
    Ok(updated)
}

/// Stores `object` in place of `existing`, keeping the server's metadata and status.
fn update_stored(
    store: &mut Store,
    kind: Kind,
    scope: &str,
    name: &str,
    existing: &Value,
    mut object: Value,
) -> Result<Value, ApiError> {
    let uid = existing
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    defaults(kind, name, &uid, &mut object);
    if kind == Kind::Job {
        // Immutable once created, as the real validation says.
        if object.pointer("/spec/template") != existing.pointer("/spec/template") {
            return Err(ApiError::invalid(
                kind,
                name,
                &[Cause::invalid(
                    "spec.template",
                    &Value::String("…".into()),
                    "field is immutable",
                )],
            ));
        }
    }
    for field in ["uid", "creationTimestamp", "namespace", "generation"] {
        match existing.pointer(&format!("/metadata/{field}")) {
            Some(value) => set_path(&mut object, &["metadata", field], value.clone()),
            None => {
                if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                    metadata.remove(field);
                }
            }
        }
    }
    if existing.get("spec") != object.get("spec")
        && let Some(generation) = existing
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
    {
        set_path(
            &mut object,
            &["metadata", "generation"],
            json!(generation + 1),
        );
    }
    match existing.get("status") {
        Some(status) => set_path(&mut object, &["status"], status.clone()),
        None => {
            if let Some(map) = object.as_object_mut() {
                map.remove("status");
            }
        }
    }
    let version = store.next_version();
    set_path(
        &mut object,
        &["metadata", "resourceVersion"],
        json!(version),
    );
    store
        .objects
        .insert((kind, scope.to_owned(), name.to_owned()), object.clone());
    Ok(object)
}

fn delete(
    state: &Arc<FakeState>,
    kind: Kind,
    namespace: &str,
    name: &str,
    policy: &str,
) -> Result<Value, ApiError> {
    let scope = if kind.namespaced() { namespace } else { "" };
    let mut store = lock(&state.store);
    let Some(mut removed) = store
        .objects
        .remove(&(kind, scope.to_owned(), name.to_owned()))
    else {
        return Err(ApiError::not_found(kind, name));
    };
    let mut stopped = Vec::new();
    match kind {
        Kind::Namespace => {
            let doomed: Vec<(Kind, String, String)> = store
                .objects
                .keys()
                .filter(|(k, ns, _)| k.namespaced() && ns == name)
                .cloned()
                .collect();
            for key in doomed {
                store.objects.remove(&key);
            }
            let pods: Vec<(String, String)> = store
                .pods
                .keys()
                .filter(|(ns, _)| ns == name)
                .cloned()
                .collect();
            for key in pods {
                stopped.extend(store.pods.remove(&key));
            }
        }
        Kind::Job if policy != "Orphan" => {
            let uid = removed
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let pods: Vec<String> = store
                .objects
                .iter()
                .filter(|((k, ns, _), pod)| {
                    *k == Kind::Pod
                        && ns == namespace
                        && pod
                            .pointer("/metadata/labels/batch.kubernetes.io~1controller-uid")
                            .and_then(Value::as_str)
                            == Some(uid.as_str())
                })
                .map(|((_, _, pod), _)| pod.clone())
                .collect();
            for pod in pods {
                stopped.extend(store.remove_pod(namespace, &pod));
            }
        }
        Kind::Pod => {
            stopped.extend(store.pods.remove(&(namespace.to_owned(), name.to_owned())));
        }
        _ => {}
    }
    let version = store.next_version();
    drop(store);
    for runtime in &stopped {
        runtime.stop();
    }
    state.bump();
    // Kinds with graceful deletion answer with the object as it starts to go; the others
    // with a success Status, as the real server does.
    match kind {
        Kind::Namespace | Kind::Job | Kind::Pod => {
            set_path(
                &mut removed,
                &["metadata", "deletionTimestamp"],
                json!(rfc3339(SystemTime::now())),
            );
            set_path(
                &mut removed,
                &["metadata", "resourceVersion"],
                json!(version),
            );
            if kind == Kind::Namespace {
                set_path(&mut removed, &["status", "phase"], json!("Terminating"));
            }
            if kind == Kind::Job && policy == "Foreground" {
                set_path(
                    &mut removed,
                    &["metadata", "finalizers"],
                    json!(["foregroundDeletion"]),
                );
            }
            Ok(removed)
        }
        _ => {
            let mut details = ApiError::kind_details(kind, name);
            details["uid"] = removed
                .pointer("/metadata/uid")
                .cloned()
                .unwrap_or(Value::Null);
            Ok(json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": details,
            }))
        }
    }
}

fn pod_log(
    state: &FakeState,
    namespace: &str,
    name: &str,
    query: &HashMap<String, String>,
) -> Result<Answer, ApiError> {
    let store = lock(&state.store);
    let Some(pod) = store.get(Kind::Pod, namespace, name) else {
        return Err(ApiError::not_found(Kind::Pod, name));
    };
    let containers: Vec<String> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect();
    let container = match query.get("container") {
        Some(container) => {
            if !containers.contains(container) {
                return Err(ApiError::bad_request(format!(
                    "container {container} is not valid for pod {name}"
                )));
            }
            container.clone()
        }
        None => match containers.as_slice() {
            [only] => only.clone(),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: {containers:?}"
                )));
            }
        },
    };
    if query
        .get("previous")
        .is_some_and(|value| value == "true" || value == "1")
    {
        return Err(ApiError::bad_request(format!(
            "previous terminated container \"{container}\" in pod \"{name}\" not found"
        )));
    }
    let Some(runtime) = store.pods.get(&(namespace.to_owned(), name.to_owned())) else {
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
        )));
    };
    if !runtime.started {
        let reason = match runtime.waiting.as_deref() {
            Some("ErrImagePull" | "ImagePullBackOff") => "trying and failing to pull image",
            Some(reason) => reason,
            None => "ContainerCreating",
        };
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: {reason}"
        )));
    }
    let follow = query
        .get("follow")
        .is_some_and(|value| value == "true" || value == "1");
    let log = Arc::clone(&runtime.log);
    drop(store);
    if !follow {
        let bytes = log.borrow().bytes.clone();
        return Ok(Answer::Stream(Body::from(bytes)));
    }
    let cut = lock(&state.log_cut).clone();
    let stop = state.stop.clone();
    let stream = async_stream::stream! {
        let mut updates = log.subscribe();
        let mut sent = 0;
        loop {
            let (chunk, closed) = {
                let current = updates.borrow_and_update();
                (current.bytes.get(sent..).unwrap_or_default().to_vec(), current.closed)
            };
            if !chunk.is_empty() {
                sent += chunk.len();
                yield Ok::<Bytes, std::io::Error>(Bytes::from(chunk));
            }
            if closed {
                break;
            }
            tokio::select! {
                changed = updates.changed() => if changed.is_err() { break },
                () = cut.cancelled() => {
                    yield Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "log stream cut by the test",
                    ));
                    break;
                }
                () = stop.cancelled() => break,
            }
        }
    };
    Ok(Answer::Stream(Body::from_stream(stream)))
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

fn validate(kind: Kind, name: &str, object: &Value) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    let name_value = json!(name);
    let name_ok = match kind {
        // Namespaces are DNS labels; a Job's name becomes a label value, so it is one too.
        Kind::Namespace | Kind::Job => is_dns_label(name),
        _ => is_dns_subdomain(name),
    };
    if !name_ok {
        let what = if matches!(kind, Kind::Namespace | Kind::Job) {
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (at most 63 characters)"
        } else {
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        };
        causes.push(Cause::invalid("metadata.name", &name_value, what));
    }
    validate_labels(
        "metadata.labels",
        object.pointer("/metadata/labels"),
        &mut causes,
    );
    match kind {
        Kind::Secret => validate_secret(object, &mut causes),
        Kind::Job => validate_job(object, &mut causes),
        Kind::NetworkPolicy => validate_network_policy(object, &mut causes),
        Kind::Namespace | Kind::Pod => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(kind, name, &causes))
    }
}

fn validate_labels(field: &str, labels: Option<&Value>, causes: &mut Vec<Cause>) {
    let Some(labels) = labels else {
        return;
    };
    let Some(labels) = labels.as_object() else {
        causes.push(Cause::invalid(field, labels, "must be an object"));
        return;
    };
    for (key, value) in labels {
        if !is_qualified_name(key) {
            causes.push(Cause::invalid(
                field,
                &json!(key),
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            ));
        }
        match value.as_str() {
            Some(text) if is_label_value(text) => {}
            _ => causes.push(Cause::invalid(
                field.to_owned(),
                value,
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (at most 63 characters)",
            )),
        }
    }
}

fn validate_secret(object: &Value, causes: &mut Vec<Cause>) {
    let mut total = 0;
    if let Some(data) = object.get("data").and_then(Value::as_object) {
        for (key, value) in data {
            if key.is_empty()
                || key.len() > 253
                || !key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                causes.push(Cause::invalid(
                    format!("data[{key}]"),
                    &json!(key),
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                ));
            }
            total += value.as_str().map_or(0, |v| v.len() * 3 / 4);
        }
    }
    if total > MAX_SECRET_BYTES {
        causes.push(Cause::invalid(
            "data",
            &json!("<data>"),
            format!("Too long: may not be more than {MAX_SECRET_BYTES} bytes"),
        ));
    }
}

fn validate_job(object: &Value, causes: &mut Vec<Cause>) {
    let Some(spec) = object.get("spec").filter(|s| s.is_object()) else {
        causes.push(Cause::required("spec", ""));
        return;
    };
    for field in [
        "backoffLimit",
        "ttlSecondsAfterFinished",
        "completions",
        "parallelism",
    ] {
        if let Some(value) = spec.get(field)
            && value.as_i64().is_none_or(|n| n < 0)
        {
            causes.push(Cause::invalid(
                format!("spec.{field}"),
                value,
                "must be greater than or equal to 0",
            ));
        }
    }
    if let Some(value) = spec.get("activeDeadlineSeconds")
        && value.as_i64().is_none_or(|n| n <= 0)
    {
        causes.push(Cause::invalid(
            "spec.activeDeadlineSeconds",
            value,
            "must be greater than 0",
        ));
    }
    validate_labels(
        "spec.template.metadata.labels",
        spec.pointer("/template/metadata/labels"),
        causes,
    );
    let Some(pod) = spec.pointer("/template/spec").filter(|s| s.is_object()) else {
        causes.push(Cause::required("spec.template.spec", ""));
        return;
    };
    match pod.get("restartPolicy") {
        None => causes.push(Cause::required(
            "spec.template.spec.restartPolicy",
            "valid values: \"OnFailure\", \"Never\"",
        )),
        Some(policy) if policy != "Never" && policy != "OnFailure" => {
            causes.push(Cause::unsupported(
                "spec.template.spec.restartPolicy",
                policy,
                &["OnFailure", "Never"],
            ))
        }
        Some(_) => {}
    }
    validate_pod_spec("spec.template.spec", pod, causes);
}

fn validate_pod_spec(field: &str, pod: &Value, causes: &mut Vec<Cause>) {
    let mut volumes = Vec::new();
    for (i, volume) in pod
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("{field}.volumes[{i}]");
        let name = volume
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !is_dns_label(name) {
            causes.push(Cause::invalid(
                format!("{at}.name"),
                &json!(name),
                "must be a DNS label",
            ));
        }
        if volumes.contains(&name) {
            causes.push(Cause::invalid(
                format!("{at}.name"),
                &json!(name),
                "Duplicate value",
            ));
        }
        volumes.push(name);
        let sources = volume
            .as_object()
            .map_or(0, |map| map.keys().filter(|key| *key != "name").count());
        if sources != 1 {
            causes.push(Cause::required(at, "must specify exactly 1 volume type"));
        }
    }
    for (i, secret) in pod
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if secret
            .get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            causes.push(Cause::required(
                format!("{field}.imagePullSecrets[{i}].name"),
                "",
            ));
        }
    }
    let containers = pod.get("containers").and_then(Value::as_array);
    if containers.is_none_or(Vec::is_empty) {
        causes.push(Cause::required(format!("{field}.containers"), ""));
    }
    let mut names = Vec::new();
    for (list, containers) in [
        (
            "initContainers",
            pod.get("initContainers").and_then(Value::as_array),
        ),
        ("containers", containers),
    ] {
        for (i, container) in containers.into_iter().flatten().enumerate() {
            let at = format!("{field}.{list}[{i}]");
            let name = container
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !is_dns_label(name) {
                causes.push(Cause::invalid(
                    format!("{at}.name"),
                    &json!(name),
                    "must be a DNS label",
                ));
            }
            if names.contains(&name) {
                causes.push(Cause::invalid(
                    format!("{at}.name"),
                    &json!(name),
                    "Duplicate value",
                ));
            }
            names.push(name);
            if container
                .get("image")
                .and_then(Value::as_str)
                .is_none_or(|i| i.trim().is_empty())
            {
                causes.push(Cause::required(format!("{at}.image"), ""));
            }
            validate_env(&at, container, causes);
            let mut mounts = Vec::new();
            for (j, mount) in container
                .get("volumeMounts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let mount_at = format!("{at}.volumeMounts[{j}]");
                let volume = mount
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !volumes.contains(&volume) {
                    causes.push(Cause {
                        field: format!("{mount_at}.name"),
                        reason: "FieldValueNotFound",
                        detail: format!("Not found: \"{volume}\""),
                    });
                }
                let path = mount
                    .get("mountPath")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !path.starts_with('/') {
                    causes.push(Cause::required(
                        format!("{mount_at}.mountPath"),
                        "an absolute path",
                    ));
                }
                if mounts.contains(&path) {
                    causes.push(Cause::invalid(
                        format!("{mount_at}.mountPath"),
                        &json!(path),
                        "must be unique",
                    ));
                }
                mounts.push(path);
            }
            for which in ["requests", "limits"] {
                let quantities = container
                    .pointer(&format!("/resources/{which}"))
                    .and_then(Value::as_object);
                for (resource, quantity) in quantities.into_iter().flatten() {
                    let valid = quantity.as_str().is_some_and(is_quantity) || quantity.is_number();
                    if !valid {
                        causes.push(Cause::invalid(
                            format!("{at}.resources.{which}[{resource}]"),
                            quantity,
                            "must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                        ));
                    }
                }
            }
        }
    }
}

fn validate_env(at: &str, container: &Value, causes: &mut Vec<Cause>) {
    for (i, env) in container
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let env_at = format!("{at}.env[{i}]");
        let name = env.get("name").and_then(Value::as_str).unwrap_or_default();
        let valid_name = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid_name {
            causes.push(Cause::invalid(
                format!("{env_at}.name"),
                &json!(name),
                "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit",
            ));
        }
        if let Some(from) = env.get("valueFrom") {
            if env
                .get("value")
                .and_then(Value::as_str)
                .is_some_and(|v| !v.is_empty())
            {
                causes.push(Cause::invalid(
                    format!("{env_at}.valueFrom"),
                    &json!(""),
                    "may not be specified when `value` is not empty",
                ));
            }
            let sources = from.as_object().map_or(0, Map::len);
            if sources != 1 {
                causes.push(Cause::invalid(
                    format!("{env_at}.valueFrom"),
                    &json!(""),
                    "may not have more than one field specified at a time",
                ));
            }
            if let Some(secret) = from.get("secretKeyRef") {
                for field in ["name", "key"] {
                    if secret
                        .get(field)
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        causes.push(Cause::required(
                            format!("{env_at}.valueFrom.secretKeyRef.{field}"),
                            "",
                        ));
                    }
                }
            }
        }
    }
}

fn validate_network_policy(object: &Value, causes: &mut Vec<Cause>) {
    let Some(spec) = object.get("spec").filter(|s| s.is_object()) else {
        causes.push(Cause::required("spec", ""));
        return;
    };
    if spec.get("podSelector").is_none_or(|s| !s.is_object()) {
        causes.push(Cause::required("spec.podSelector", ""));
    }
    for policy_type in spec
        .get("policyTypes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if policy_type != "Ingress" && policy_type != "Egress" {
            causes.push(Cause::unsupported(
                "spec.policyTypes",
                policy_type,
                &["Ingress", "Egress"],
            ));
        }
    }
    for (direction, peers) in [("ingress", "from"), ("egress", "to")] {
        for (i, rule) in spec
            .get(direction)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let at = format!("spec.{direction}[{i}]");
            for (j, port) in rule
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                if let Some(protocol) = port.get("protocol")
                    && !["TCP", "UDP", "SCTP"].iter().any(|p| protocol == p)
                {
                    causes.push(Cause::unsupported(
                        format!("{at}.ports[{j}].protocol"),
                        protocol,
                        &["TCP", "UDP", "SCTP"],
                    ));
                }
                match port.get("port") {
                    None | Some(Value::String(_)) => {}
                    Some(number) => {
                        if number.as_i64().is_none_or(|n| !(1..=65535).contains(&n)) {
                            causes.push(Cause::invalid(
                                format!("{at}.ports[{j}].port"),
                                number,
                                "must be between 1 and 65535, inclusive",
                            ));
                        }
                    }
                }
            }
            for (j, peer) in rule
                .get(peers)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let Some(block) = peer.get("ipBlock") else {
                    continue;
                };
                let peer_at = format!("{at}.{peers}[{j}].ipBlock");
                let cidr = block
                    .get("cidr")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let Some(outer) = parse_cidr(cidr) else {
                    causes.push(Cause::invalid(
                        format!("{peer_at}.cidr"),
                        &json!(cidr),
                        "must be a valid CIDR",
                    ));
                    continue;
                };
                for (k, except) in block
                    .get("except")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let text = except.as_str().unwrap_or_default();
                    let inside =
                        parse_cidr(text).is_some_and(|inner| cidr_contains(&outer, &inner));
                    if !inside {
                        causes.push(Cause::invalid(
                            format!("{peer_at}.except[{k}]"),
                            except,
                            "must be a strict subset of `cidr`",
                        ));
                    }
                }
            }
        }
    }
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

fn is_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

fn is_qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

fn is_quantity(text: &str) -> bool {
    let digits_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits_end);
    !number.is_empty()
        && number.chars().any(|c| c.is_ascii_digit())
        && [
            "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u",
        ]
        .contains(&suffix)
}

/// An address family (4 or 16 bytes), its bits and the prefix length.
fn parse_cidr(text: &str) -> Option<(Vec<u8>, u32)> {
    let (address, prefix) = text.split_once('/')?;
    let prefix: u32 = prefix.parse().ok()?;
    let address: std::net::IpAddr = address.parse().ok()?;
    let bytes = match address {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    let bits = u32::try_from(bytes.len()).ok()? * 8;
    (prefix <= bits).then_some((bytes, prefix))
}

fn cidr_contains(outer: &(Vec<u8>, u32), inner: &(Vec<u8>, u32)) -> bool {
    if outer.0.len() != inner.0.len() || inner.1 < outer.1 {
        return false;
    }
    (0..outer.1).all(|bit| {
        let byte = (bit / 8) as usize;
        let mask = 0x80u8 >> (bit % 8);
        outer.0.get(byte).map(|b| b & mask) == inner.0.get(byte).map(|b| b & mask)
    })
}

// ---------------------------------------------------------------------------------------------
// Pod Security admission
// ---------------------------------------------------------------------------------------------

fn admit_pod_security(
    store: &Store,
    namespace: &str,
    kind: Kind,
    name: &str,
    pod_spec: Option<&Value>,
) -> Result<(), ApiError> {
    let labels = store
        .get(Kind::Namespace, "", namespace)
        .and_then(|ns| ns.pointer("/metadata/labels"));
    let level = labels
        .and_then(|l| l.get(PSA_ENFORCE_LABEL))
        .and_then(Value::as_str)
        .unwrap_or("privileged");
    let version = labels
        .and_then(|l| l.get(PSA_ENFORCE_VERSION_LABEL))
        .and_then(Value::as_str)
        .unwrap_or("latest");
    let Some(spec) = pod_spec else {
        return Ok(());
    };
    let violations = pod_security_violations(level, spec);
    if violations.is_empty() {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            kind,
            name,
            &format!(
                "violates PodSecurity \"{level}:{version}\": {}",
                violations.join(", ")
            ),
        ))
    }
}

/// The checks of the Pod Security Standards that a pod spec fails at `level`, worded as the
/// real admission plugin words them.
fn pod_security_violations(level: &str, spec: &Value) -> Vec<String> {
    let restricted = level == "restricted";
    if !restricted && level != "baseline" {
        return Vec::new();
    }
    let containers: Vec<&Value> = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .filter_map(|list| spec.get(*list).and_then(Value::as_array))
        .flatten()
        .collect();
    let container_name = |c: &Value| {
        c.get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let quoted = |names: &[String]| {
        names
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let plural = |names: &[String]| {
        if names.len() == 1 {
            "container"
        } else {
            "containers"
        }
    };
    let mut violations = Vec::new();

    // baseline
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec.get(field) == Some(&json!(true)) {
            violations.push(format!("host namespaces ({field}=true)"));
        }
    }
    let privileged: Vec<String> = containers
        .iter()
        .filter(|c| c.pointer("/securityContext/privileged") == Some(&json!(true)))
        .map(|c| container_name(c))
        .collect();
    if !privileged.is_empty() {
        violations.push(format!(
            "privileged ({} {} must not set securityContext.privileged=true)",
            plural(&privileged),
            quoted(&privileged)
        ));
    }
    let host_paths: Vec<String> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v.get("hostPath").is_some())
        .map(|v| {
            v.get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    if !host_paths.is_empty() {
        violations.push(format!("hostPath volumes ({})", quoted(&host_paths)));
    }
    let host_ports: Vec<String> = containers
        .iter()
        .filter(|c| {
            c.get("ports")
                .and_then(Value::as_array)
                .is_some_and(|ports| {
                    ports.iter().any(|p| {
                        p.get("hostPort")
                            .and_then(Value::as_i64)
                            .is_some_and(|n| n != 0)
                    })
                })
        })
        .map(|c| container_name(c))
        .collect();
    if !host_ports.is_empty() {
        violations.push(format!(
            "hostPort ({} {} uses hostPort)",
            plural(&host_ports),
            quoted(&host_ports)
        ));
    }
    if !restricted {
        return violations;
    }

    // restricted
    const ALLOWED_VOLUMES: [&str; 8] = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    let restricted_volumes: Vec<String> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| {
            v.as_object().is_some_and(|map| {
                map.keys()
                    .any(|key| key != "name" && !ALLOWED_VOLUMES.contains(&key.as_str()))
            })
        })
        .map(|v| {
            v.get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    if !restricted_volumes.is_empty() {
        violations.push(format!(
            "restricted volume types ({} {} must use an allowed volume type)",
            if restricted_volumes.len() == 1 {
                "volume"
            } else {
                "volumes"
            },
            quoted(&restricted_volumes)
        ));
    }
    let escalating: Vec<String> = containers
        .iter()
        .filter(|c| c.pointer("/securityContext/allowPrivilegeEscalation") != Some(&json!(false)))
        .map(|c| container_name(c))
        .collect();
    if !escalating.is_empty() {
        violations.push(format!(
            "allowPrivilegeEscalation != false ({} {} must set securityContext.allowPrivilegeEscalation=false)",
            plural(&escalating),
            quoted(&escalating)
        ));
    }
    let capable: Vec<String> = containers
        .iter()
        .filter(|c| {
            let drops_all = c
                .pointer("/securityContext/capabilities/drop")
                .and_then(Value::as_array)
                .is_some_and(|drop| drop.iter().any(|d| d == "ALL"));
            let adds_more = c
                .pointer("/securityContext/capabilities/add")
                .and_then(Value::as_array)
                .is_some_and(|add| add.iter().any(|a| a != "NET_BIND_SERVICE"));
            !drops_all || adds_more
        })
        .map(|c| container_name(c))
        .collect();
    if !capable.is_empty() {
        violations.push(format!(
            "unrestricted capabilities ({} {} must set securityContext.capabilities.drop=[\"ALL\"])",
            plural(&capable),
            quoted(&capable)
        ));
    }
    let pod_non_root = spec.pointer("/securityContext/runAsNonRoot") == Some(&json!(true));
    let root_containers: Vec<String> = containers
        .iter()
        .filter(|c| match c.pointer("/securityContext/runAsNonRoot") {
            Some(value) => value != &json!(true),
            None => !pod_non_root,
        })
        .map(|c| container_name(c))
        .collect();
    if !root_containers.is_empty() {
        violations.push(format!(
            "runAsNonRoot != true (pod or {} {} must set securityContext.runAsNonRoot=true)",
            plural(&root_containers),
            quoted(&root_containers)
        ));
    }
    if spec.pointer("/securityContext/runAsUser") == Some(&json!(0)) {
        violations.push("runAsUser=0 (pod must not set runAsUser=0)".to_owned());
    }
    let root_user: Vec<String> = containers
        .iter()
        .filter(|c| c.pointer("/securityContext/runAsUser") == Some(&json!(0)))
        .map(|c| container_name(c))
        .collect();
    if !root_user.is_empty() {
        violations.push(format!(
            "runAsUser=0 ({} {} must not set runAsUser=0)",
            plural(&root_user),
            quoted(&root_user)
        ));
    }
    let allowed_seccomp = |profile: Option<&Value>| {
        profile.is_some_and(|t| t == "RuntimeDefault" || t == "Localhost")
    };
    let pod_seccomp = spec.pointer("/securityContext/seccompProfile/type");
    let unconfined: Vec<String> = containers
        .iter()
        .filter(
            |c| match c.pointer("/securityContext/seccompProfile/type") {
                Some(profile) => !allowed_seccomp(Some(profile)),
                None => !allowed_seccomp(pod_seccomp),
            },
        )
        .map(|c| container_name(c))
        .collect();
    if pod_seccomp.is_some() && !allowed_seccomp(pod_seccomp) {
        violations.push(
            "seccompProfile (pod must not set securityContext.seccompProfile.type to \"Unconfined\")"
                .to_owned(),
        );
    } else if !unconfined.is_empty() {
        violations.push(format!(
            "seccompProfile (pod or {} {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")",
            plural(&unconfined),
            quoted(&unconfined)
        ));
    }
    violations
}

// ---------------------------------------------------------------------------------------------
// Label selectors
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct LabelSelector {
    requirements: Vec<Requirement>,
}

enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

impl LabelSelector {
    fn parse(text: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let requirement = if let Some((key, value)) = part.split_once("!=") {
                Requirement::NotEquals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, value)) = part.split_once("==") {
                Requirement::Equals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, value)) = part.split_once('=') {
                Requirement::Equals(key.trim().to_owned(), value.trim().to_owned())
            } else if part.contains(' ') || part.contains('(') {
                return Err(ApiError::bad_request(format!(
                    "unable to parse requirement: the fake supports only equality-based selectors, got {part:?}"
                )));
            } else if let Some(key) = part.strip_prefix('!') {
                Requirement::NotExists(key.to_owned())
            } else {
                Requirement::Exists(part.to_owned())
            };
            requirements.push(requirement);
        }
        Ok(Self { requirements })
    }

    fn matches(&self, labels: Option<&Value>) -> bool {
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.requirements
            .iter()
            .all(|requirement| match requirement {
                Requirement::Equals(key, value) => label(key) == Some(value.as_str()),
                Requirement::NotEquals(key, value) => label(key) != Some(value.as_str()),
                Requirement::Exists(key) => label(key).is_some(),
                Requirement::NotExists(key) => label(key).is_none(),
            })
    }
}

// ---------------------------------------------------------------------------------------------
// The Job controller
// ---------------------------------------------------------------------------------------------

/// Creates the Job's pod, hands it to the kubelet and reports the outcome in the pod's and the
/// Job's status; enforces `activeDeadlineSeconds`.
async fn run_job(state: Arc<FakeState>, namespace: String, job: String, job_uid: String) {
    let Some(pod) = create_pod(&state, &namespace, &job, &job_uid) else {
        return;
    };
    let deadline = pod.deadline;
    let stop = pod.stop.clone();
    let pod_name = pod.name.clone();
    let pod_uid = pod.uid.clone();
    let running = run_pod(Arc::clone(&state), pod);
    tokio::pin!(running);
    let timer = async {
        match deadline {
            Some(deadline) => tokio::time::sleep(deadline).await,
            None => std::future::pending().await,
        }
    };
    let exit = tokio::select! {
        exit = &mut running => Some(exit),
        () = timer => None,
    };
    match exit {
        Some(PodExit::Exited { code, reason }) => {
            finish_pod(
                &state,
                &namespace,
                &pod_name,
                &pod_uid,
                code,
                reason.as_deref(),
            );
            finish_job(&state, &namespace, &job, &job_uid, code == 0, None);
        }
        Some(PodExit::Stopped) => {
            // Deleted (with its Job or namespace) or the server stopped: nothing to report.
        }
        None => {
            // As the real controller does: the Job fails and its running pods are deleted.
            let runtime = lock(&state.store).remove_pod(&namespace, &pod_name);
            if let Some(runtime) = runtime {
                runtime.stop();
            }
            stop.cancel();
            running.await;
            finish_job(
                &state,
                &namespace,
                &job,
                &job_uid,
                false,
                Some((
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                )),
            );
        }
    }
    state.bump();
}

struct NewPod {
    namespace: String,
    name: String,
    uid: String,
    object: Value,
    log: Arc<watch::Sender<LogState>>,
    stop: CancellationToken,
    deadline: Option<Duration>,
}

fn create_pod(state: &FakeState, namespace: &str, job: &str, job_uid: &str) -> Option<NewPod> {
    let mut store = lock(&state.store);
    let job_object = store.get(Kind::Job, namespace, job)?.clone();
    let template = job_object.pointer("/spec/template")?.clone();
    let name = format!("{job}-{}", random_suffix());
    let uid = uuid::Uuid::new_v4().to_string();
    let now = rfc3339(SystemTime::now());
    let version = store.next_version();
    let mut metadata = template
        .get("metadata")
        .cloned()
        .unwrap_or_else(|| json!({}));
    metadata["name"] = json!(name);
    metadata["generateName"] = json!(format!("{job}-"));
    metadata["namespace"] = json!(namespace);
    metadata["uid"] = json!(uid);
    metadata["creationTimestamp"] = json!(now);
    metadata["resourceVersion"] = json!(version);
    metadata["ownerReferences"] = json!([{
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": job,
        "uid": job_uid,
        "controller": true,
        "blockOwnerDeletion": true,
    }]);
    let mut spec = template.get("spec").cloned().unwrap_or_else(|| json!({}));
    spec["nodeName"] = json!("fake-node");
    if spec.get("serviceAccountName").is_none() {
        spec["serviceAccountName"] = json!("default");
    }
    let statuses: Vec<Value> = spec
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            json!({
                "name": c.get("name").cloned().unwrap_or(Value::Null),
                "image": c.get("image").cloned().unwrap_or(Value::Null),
                "imageID": "",
                "ready": false,
                "restartCount": 0,
                "started": false,
                "state": {"waiting": {"reason": "ContainerCreating"}},
            })
        })
        .collect();
    let object = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": spec,
        "status": {
            "phase": "Pending",
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "startTime": now,
            "qosClass": "Burstable",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            ],
            "containerStatuses": statuses,
        },
    });
    store.objects.insert(
        (Kind::Pod, namespace.to_owned(), name.clone()),
        object.clone(),
    );
    let log = Arc::new(watch::channel(LogState::default()).0);
    let stop = state.stop.child_token();
    store.pods.insert(
        (namespace.to_owned(), name.clone()),
        PodRuntime {
            uid: uid.clone(),
            log: Arc::clone(&log),
            stop: stop.clone(),
            started: false,
            waiting: None,
        },
    );
    if let Some(job) = store.get_mut_uid(Kind::Job, namespace, job, job_uid) {
        job["status"]["startTime"] = json!(now);
        job["status"]["active"] = json!(1);
        job["status"]["ready"] = json!(0);
        job["status"]["terminating"] = json!(0);
        job["status"]["uncountedTerminatedPods"] = json!({});
        job["metadata"]["resourceVersion"] = json!(version);
    }
    let deadline = job_object
        .pointer("/spec/activeDeadlineSeconds")
        .and_then(Value::as_u64)
        .map(Duration::from_secs);
    drop(store);
    state.bump();
    Some(NewPod {
        namespace: namespace.to_owned(),
        name,
        uid,
        object,
        log,
        stop,
        deadline,
    })
}

/// Resolves the container's environment (retrying as the kubelet does while a referenced
/// Secret or key is missing), then runs the kubelet.
async fn run_pod(state: Arc<FakeState>, pod: NewPod) -> PodExit {
    let container = pod
        .object
        .pointer("/spec/containers/0")
        .cloned()
        .unwrap_or(Value::Null);
    let mut changes = state.changed.subscribe();
    let env = loop {
        changes.mark_unchanged();
        match resolve_env(&state, &pod.namespace, &pod.name, &pod.object, &container) {
            Ok(env) => break env,
            Err(message) => {
                set_waiting(
                    &state,
                    &pod.namespace,
                    &pod.name,
                    &pod.uid,
                    "CreateContainerConfigError",
                    &message,
                );
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return PodExit::Stopped },
                    () = pod.stop.cancelled() => return PodExit::Stopped,
                }
            }
        }
    };
    let handle = PodHandle {
        namespace: pod.namespace,
        name: pod.name,
        uid: pod.uid,
        pod: pod.object,
        container,
        env,
        log: pod.log,
        stop: pod.stop,
        state: Arc::clone(&state),
    };
    let kubelet = Arc::clone(&state.kubelet);
    kubelet.run(handle).await
}

fn resolve_env(
    state: &FakeState,
    namespace: &str,
    pod_name: &str,
    pod: &Value,
    container: &Value,
) -> Result<Vec<(String, String)>, String> {
    let store = lock(&state.store);
    let mut env = Vec::new();
    for entry in container
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = entry
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if let Some(value) = entry.get("value").and_then(Value::as_str) {
            env.push((name, value.to_owned()));
            continue;
        }
        let Some(from) = entry.get("valueFrom") else {
            env.push((name, String::new()));
            continue;
        };
        if let Some(reference) = from.get("secretKeyRef") {
            let secret = reference
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let key = reference
                .get("key")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let optional = reference.get("optional") == Some(&json!(true));
            let Some(object) = store.get(Kind::Secret, namespace, secret) else {
                if optional {
                    continue;
                }
                return Err(format!("secret \"{secret}\" not found"));
            };
            match object
                .pointer(&format!(
                    "/data/{}",
                    key.replace('~', "~0").replace('/', "~1")
                ))
                .and_then(Value::as_str)
            {
                Some(encoded) => {
                    let bytes = base64_decode(encoded).unwrap_or_default();
                    env.push((name, String::from_utf8_lossy(&bytes).into_owned()));
                }
                None if optional => {}
                None => {
                    return Err(format!(
                        "couldn't find key {key} in Secret {namespace}/{secret}"
                    ));
                }
            }
        } else if let Some(reference) = from.get("fieldRef") {
            let path = reference
                .get("fieldPath")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let value = match path {
                "metadata.name" => Some(pod_name.to_owned()),
                "metadata.namespace" => Some(namespace.to_owned()),
                "metadata.uid" => pod
                    .pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                "spec.nodeName" => Some("fake-node".to_owned()),
                "spec.serviceAccountName" => pod
                    .pointer("/spec/serviceAccountName")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                "status.podIP" | "status.hostIP" => Some("127.0.0.1".to_owned()),
                _ => None,
            };
            match value {
                Some(value) => env.push((name, value)),
                None => return Err(format!("the fake kubelet cannot resolve fieldRef {path}")),
            }
        } else {
            return Err(format!(
                "the fake kubelet resolves only secretKeyRef and fieldRef (variable {name})"
            ));
        }
    }
    Ok(env)
}

fn set_waiting(
    state: &FakeState,
    namespace: &str,
    pod: &str,
    uid: &str,
    reason: &str,
    message: &str,
) {
    let mut store = lock(&state.store);
    let changed = match store.pods.get_mut(&(namespace.to_owned(), pod.to_owned())) {
        Some(runtime) if runtime.uid == uid => {
            let changed = runtime.waiting.as_deref() != Some(reason);
            runtime.waiting = Some(reason.to_owned());
            changed
        }
        _ => false,
    };
    if !changed {
        return;
    }
    let version = store.next_version();
    if let Some(object) = store.get_mut_uid(Kind::Pod, namespace, pod, uid) {
        object["status"]["containerStatuses"][0]["state"] =
            json!({"waiting": {"reason": reason, "message": message}});
        object["metadata"]["resourceVersion"] = json!(version);
    }
    drop(store);
    state.bump();
}

fn set_running(state: &FakeState, namespace: &str, pod: &str, uid: &str, job_uid: Option<&str>) {
    let mut store = lock(&state.store);
    match store.pods.get_mut(&(namespace.to_owned(), pod.to_owned())) {
        Some(runtime) if runtime.uid == uid => {
            runtime.started = true;
            runtime.waiting = None;
        }
        _ => return,
    }
    let now = rfc3339(SystemTime::now());
    let version = store.next_version();
    let mut job_name = None;
    if let Some(object) = store.get_mut_uid(Kind::Pod, namespace, pod, uid) {
        object["status"]["phase"] = json!("Running");
        object["status"]["conditions"] = json!([
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
        ]);
        let status = &mut object["status"]["containerStatuses"][0];
        status["state"] = json!({"running": {"startedAt": now}});
        status["ready"] = json!(true);
        status["started"] = json!(true);
        status["containerID"] = json!(format!("fake://{uid}"));
        object["metadata"]["resourceVersion"] = json!(version);
        job_name = object
            .pointer("/metadata/labels/batch.kubernetes.io~1job-name")
            .and_then(Value::as_str)
            .map(str::to_owned);
    }
    if let (Some(job), Some(job_uid)) = (job_name, job_uid)
        && let Some(job) = store.get_mut_uid(Kind::Job, namespace, &job, job_uid)
    {
        job["status"]["ready"] = json!(1);
    }
    drop(store);
    state.bump();
}

fn finish_pod(
    state: &FakeState,
    namespace: &str,
    pod: &str,
    uid: &str,
    code: i32,
    reason: Option<&str>,
) {
    let mut store = lock(&state.store);
    let Some(runtime) = store
        .pods
        .get(&(namespace.to_owned(), pod.to_owned()))
        .filter(|runtime| runtime.uid == uid)
    else {
        return;
    };
    let log = Arc::clone(&runtime.log);
    let now = rfc3339(SystemTime::now());
    let version = store.next_version();
    if let Some(object) = store.get_mut_uid(Kind::Pod, namespace, pod, uid) {
        let phase = if code == 0 { "Succeeded" } else { "Failed" };
        let reason = reason.unwrap_or(if code == 0 { "Completed" } else { "Error" });
        let started_at = object
            .pointer("/status/containerStatuses/0/state/running/startedAt")
            .cloned()
            .unwrap_or_else(|| json!(now));
        let mut terminated = json!({
            "exitCode": code,
            "reason": reason,
            "startedAt": started_at,
            "finishedAt": now,
            "containerID": format!("fake://{uid}"),
        });
        let fallback = object
            .pointer("/spec/containers/0/terminationMessagePolicy")
            .and_then(Value::as_str)
            == Some("FallbackToLogsOnError");
        if fallback && code != 0 {
            terminated["message"] = json!(log_tail(&log.borrow().bytes));
        }
        object["status"]["phase"] = json!(phase);
        let status = &mut object["status"]["containerStatuses"][0];
        status["state"] = json!({"terminated": terminated});
        status["ready"] = json!(false);
        status["started"] = json!(false);
        if let Some(conditions) = object["status"]["conditions"].as_array_mut() {
            for condition in conditions.iter_mut() {
                if condition["type"] == "Ready" || condition["type"] == "ContainersReady" {
                    condition["status"] = json!("False");
                    condition["reason"] = json!("PodCompleted");
                }
            }
        }
        object["metadata"]["resourceVersion"] = json!(version);
    }
    drop(store);
    close_log(&log);
    state.bump();
}

/// The end of the log as `FallbackToLogsOnError` keeps it.
fn log_tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(TERMINATION_LOG_LINES)..].join("\n");
    let start = tail.len().saturating_sub(TERMINATION_LOG_BYTES);
    let start = (start..=tail.len())
        .find(|i| tail.is_char_boundary(*i))
        .unwrap_or(tail.len());
    tail[start..].to_owned()
}

fn finish_job(
    state: &FakeState,
    namespace: &str,
    job: &str,
    job_uid: &str,
    succeeded: bool,
    failure: Option<(&str, &str)>,
) {
    let mut store = lock(&state.store);
    let version = store.next_version();
    let Some(object) = store.get_mut_uid(Kind::Job, namespace, job, job_uid) else {
        return;
    };
    let now = rfc3339(SystemTime::now());
    let status = &mut object["status"];
    status["active"] = json!(0);
    status["ready"] = json!(0);
    let condition = |kind: &str, reason: &str, message: &str| {
        json!({
            "type": kind,
            "status": "True",
            "reason": reason,
            "message": message,
            "lastProbeTime": now,
            "lastTransitionTime": now,
        })
    };
    if succeeded {
        status["succeeded"] = json!(1);
        status["completionTime"] = json!(now);
        status["conditions"] = json!([
            condition(
                "SuccessCriteriaMet",
                "CompletionsReached",
                "Reached expected number of succeeded pods"
            ),
            condition(
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods"
            ),
        ]);
    } else {
        let (reason, message) = failure.unwrap_or((
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        ));
        if failure.is_none() {
            status["failed"] = json!(1);
        }
        status["conditions"] = json!([
            condition("FailureTarget", reason, message),
            condition("Failed", reason, message),
        ]);
    }
    object["metadata"]["resourceVersion"] = json!(version);
    drop(store);
    state.bump();
}

// ---------------------------------------------------------------------------------------------
// Kubelets
// ---------------------------------------------------------------------------------------------

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Runs the pods the fake's Job controller creates. Implemented by [`ProcessKubelet`] and by
/// any `Fn(PodHandle) -> impl Future<Output = PodExit>`.
pub trait Kubelet: Send + Sync + 'static {
    /// Runs `pod` until its container exits or [`PodHandle::stopped`] resolves (the pod was
    /// deleted). Call [`PodHandle::started`] once the container runs (before that its log
    /// cannot be read) or [`PodHandle::waiting`] if it cannot start.
    fn run(&self, pod: PodHandle) -> BoxFuture<PodExit>;
}

impl<F, Fut> Kubelet for F
where
    F: Fn(PodHandle) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = PodExit> + Send + 'static,
{
    fn run(&self, pod: PodHandle) -> BoxFuture<PodExit> {
        Box::pin(self(pod))
    }
}

/// How a pod's container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodExit {
    /// The container exited: phase `Succeeded` for 0, else `Failed`. `reason` overrides the
    /// terminated state's reason (`Completed`/`Error`), e.g. `OOMKilled`.
    Exited { code: i32, reason: Option<String> },
    /// The pod was deleted (or the server stopped) before its container exited.
    Stopped,
}

/// A pod handed to a [`Kubelet`]: what to run, and how to report on it.
pub struct PodHandle {
    namespace: String,
    name: String,
    uid: String,
    pod: Value,
    container: Value,
    env: Vec<(String, String)>,
    log: Arc<watch::Sender<LogState>>,
    stop: CancellationToken,
    state: Arc<FakeState>,
}

impl fmt::Debug for PodHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodHandle")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl PodHandle {
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pod as the Job controller created it.
    pub fn pod(&self) -> &Value {
        &self.pod
    }

    /// The first container of the pod (the one that runs).
    pub fn container(&self) -> &Value {
        &self.container
    }

    /// The container's environment with `secretKeyRef`s and `fieldRef`s resolved, in spec
    /// order.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// The container runs: phase `Running`, its log can be read.
    pub fn started(&self) {
        let job_uid = self
            .pod
            .pointer("/metadata/ownerReferences/0/uid")
            .and_then(Value::as_str);
        set_running(&self.state, &self.namespace, &self.name, &self.uid, job_uid);
    }

    /// The container cannot start yet (`ErrImagePull`, `CreateContainerConfigError`, …).
    pub fn waiting(&self, reason: &str, message: &str) {
        set_waiting(
            &self.state,
            &self.namespace,
            &self.name,
            &self.uid,
            reason,
            message,
        );
    }

    /// Appends to the pod's log (followers see it at once).
    pub fn write_log(&self, bytes: &[u8]) {
        self.log
            .send_modify(|state| state.bytes.extend_from_slice(bytes));
        self.state.bump();
    }

    /// Resolves when the pod is deleted or the server stops.
    pub async fn stopped(&self) {
        self.stop.cancelled().await;
    }

    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }
}

/// A process a [`ProcessKubelet`] started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedProcess {
    pub namespace: String,
    pub pod: String,
    pub pid: u32,
    pub argv: Vec<String>,
}

/// The default kubelet: runs a pod's first container as a local process.
///
/// - What runs: the container's `command` + `args` if it has a `command`; else the argv
///   mapped to its image with [`image`](ProcessKubelet::image) (standing for the image's
///   entrypoint) followed by the container's `args`; else the pod waits with `ErrImagePull`.
/// - Environment: only the container's (resolved) variables, plus `PATH` from this process,
///   `HOSTNAME` and a `HOME` under the pod's directory, as a container would not see the
///   test's environment.
/// - Volumes: each `emptyDir` volume is a directory under the pod's directory; environment
///   values naming a mount path (or a path under it) and `workingDir` are rewritten to it, so
///   `HOME=/home/agent` works without root. (So a host path handed to a pod in its
///   environment must not lie under a mount path such as `/tmp`.)
/// - Output: stdout and stderr, line by line, become the pod's log.
/// - Stop: the process runs in its own process group; deleting the pod sends it SIGTERM,
///   then SIGKILL after the grace period. When the main process exits, what is left of its
///   group is killed, as in a container. It also dies with the test process (PDEATHSIG).
#[derive(Clone)]
pub struct ProcessKubelet {
    inner: Arc<ProcessKubeletInner>,
}

struct ProcessKubeletInner {
    images: Mutex<HashMap<String, Vec<String>>>,
    grace: Mutex<Duration>,
    root: Mutex<Option<tempfile::TempDir>>,
    started: Mutex<Vec<StartedProcess>>,
}

impl Default for ProcessKubelet {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ProcessKubelet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessKubelet")
            .field("images", &*lock(&self.inner.images))
            .finish_non_exhaustive()
    }
}

impl ProcessKubelet {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(ProcessKubeletInner {
                images: Mutex::new(HashMap::new()),
                grace: Mutex::new(Duration::from_secs(5)),
                root: Mutex::new(None),
                started: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Runs containers of `image` (without a `command` of their own) as `argv`.
    #[must_use]
    pub fn image<S: Into<String>>(self, image: &str, argv: impl IntoIterator<Item = S>) -> Self {
        self.set_image(image, argv);
        self
    }

    /// Like [`image`](ProcessKubelet::image), on a kubelet already in use.
    pub fn set_image<S: Into<String>>(&self, image: &str, argv: impl IntoIterator<Item = S>) {
        lock(&self.inner.images)
            .insert(image.to_owned(), argv.into_iter().map(Into::into).collect());
    }

    /// How long a deleted pod's process has between SIGTERM and SIGKILL (default 5 s).
    #[must_use]
    pub fn grace(self, grace: Duration) -> Self {
        *lock(&self.inner.grace) = grace;
        self
    }

    /// Every process started so far, in order.
    pub fn started(&self) -> Vec<StartedProcess> {
        lock(&self.inner.started).clone()
    }
}

impl Kubelet for ProcessKubelet {
    fn run(&self, pod: PodHandle) -> BoxFuture<PodExit> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move { inner.run(pod).await })
    }
}

impl ProcessKubeletInner {
    fn argv(&self, container: &Value) -> Option<Vec<String>> {
        let strings = |field: &str| -> Option<Vec<String>> {
            container.get(field).and_then(Value::as_array).map(|items| {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
        };
        let args = strings("args").unwrap_or_default();
        if let Some(command) = strings("command").filter(|c| !c.is_empty()) {
            return Some(command.into_iter().chain(args).collect());
        }
        let image = container
            .get("image")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let entrypoint = lock(&self.images).get(image).cloned()?;
        Some(entrypoint.into_iter().chain(args).collect())
    }

    fn pod_dir(&self, pod: &PodHandle) -> std::io::Result<PathBuf> {
        let mut root = lock(&self.root);
        if root.is_none() {
            *root = Some(tempfile::Builder::new().prefix("fake-kubelet-").tempdir()?);
        }
        let base = root
            .as_ref()
            .map(|dir| dir.path().to_path_buf())
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(&pod.namespace).join(&pod.name);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    async fn run(&self, pod: PodHandle) -> PodExit {
        let image = pod
            .container
            .get("image")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let Some(argv) = self.argv(&pod.container) else {
            pod.waiting(
                "ErrImagePull",
                &format!(
                    "failed to pull and unpack image \"{image}\": not found (the fake kubelet runs images mapped with ProcessKubelet::image, or containers with a command)"
                ),
            );
            pod.stopped().await;
            return PodExit::Stopped;
        };
        let started = self.start(&pod, &argv);
        let (mut child, pid) = match started {
            Ok(started) => started,
            Err(error) => {
                pod.write_log(format!("fake kubelet: cannot start {argv:?}: {error}\n").as_bytes());
                pod.started();
                return PodExit::Exited {
                    code: 128,
                    reason: Some("StartError".to_owned()),
                };
            }
        };
        lock(&self.started).push(StartedProcess {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            pid,
            argv,
        });
        // If this future is dropped (the runtime of a finished test shuts down), the whole
        // group goes, not only the main process `kill_on_drop` reaches.
        let _group = KillGroupOnDrop(pid);
        pod.started();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let readers = async {
            let out = async {
                if let Some(out) = stdout {
                    copy_lines(out, &pod).await;
                }
            };
            let err = async {
                if let Some(err) = stderr {
                    copy_lines(err, &pod).await;
                }
            };
            tokio::join!(out, err);
        };
        tokio::pin!(readers);
        // The output is copied while the process runs (followers see it live), and may end
        // before the process does (it closed its stdout) or after (a child still holds it).
        let mut output_done = false;
        let exit = loop {
            tokio::select! {
                status = child.wait() => break Some(status),
                () = pod.stopped() => break None,
                () = &mut readers, if !output_done => output_done = true,
            }
        };
        let Some(status) = exit else {
            signal_group(pid, libc::SIGTERM);
            let grace = *lock(&self.grace);
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                signal_group(pid, libc::SIGKILL);
                if let Err(error) = child.wait().await {
                    tracing::warn!(%error, pid, "cannot reap a killed pod's process");
                }
            }
            // Whatever else of the group is left dies with the pod.
            signal_group(pid, libc::SIGKILL);
            return PodExit::Stopped;
        };
        // The container's other processes end with its main one.
        signal_group(pid, libc::SIGKILL);
        if !output_done
            && tokio::time::timeout(Duration::from_secs(5), &mut readers)
                .await
                .is_err()
        {
            tracing::warn!(
                pid,
                "a pod's output was still open after its process group was killed"
            );
        }
        let code = match status {
            Ok(status) => status.code().unwrap_or_else(|| {
                128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
            }),
            Err(error) => {
                pod.write_log(
                    format!("fake kubelet: waiting for the process failed: {error}\n").as_bytes(),
                );
                128
            }
        };
        PodExit::Exited { code, reason: None }
    }

    fn start(
        &self,
        pod: &PodHandle,
        argv: &[String],
    ) -> anyhow::Result<(tokio::process::Child, u32)> {
        let dir = self.pod_dir(pod).context("creating the pod's directory")?;
        // Each emptyDir volume becomes a directory; mount paths map onto them.
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        let empty_dirs: Vec<String> = pod
            .pod
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|v| v.get("emptyDir").is_some())
            .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect();
        for mount in pod
            .container
            .get("volumeMounts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let volume = mount
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let path = mount
                .get("mountPath")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if empty_dirs.iter().any(|v| v == volume) {
                let local = dir.join("volumes").join(volume);
                std::fs::create_dir_all(&local)
                    .with_context(|| format!("creating {}", local.display()))?;
                mounts.push((path.trim_end_matches('/').to_owned(), local));
            }
        }
        // Longest mount path first, so nested mounts win.
        mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        let map_path = |value: &str| -> String {
            for (mount, local) in &mounts {
                if value == mount {
                    return local.display().to_string();
                }
                if let Some(rest) = value.strip_prefix(&format!("{mount}/")) {
                    return local.join(rest).display().to_string();
                }
            }
            value.to_owned()
        };
        let program = argv.first().context("the container's command is empty")?;
        let mut command = tokio::process::Command::new(program);
        command.args(&argv[1..]).env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        command.env("HOSTNAME", &pod.name);
        command.env("HOME", dir.join("home"));
        std::fs::create_dir_all(dir.join("home")).context("creating the pod's HOME")?;
        for (name, value) in &pod.env {
            command.env(name, map_path(value));
        }
        let working_dir = pod
            .container
            .get("workingDir")
            .and_then(Value::as_str)
            .map_or_else(|| dir.clone(), |wd| PathBuf::from(map_path(wd)));
        command
            .current_dir(&working_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        set_death_signal(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("starting {argv:?} in {}", working_dir.display()))?;
        let pid = child
            .id()
            .context("the process exited before it was seen")?;
        Ok((child, pid))
    }
}

async fn copy_lines(stream: impl AsyncRead + Unpin, pod: &PodHandle) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) => break,
            Ok(_) => pod.write_log(&line),
            Err(error) => {
                tracing::debug!(%error, "reading a pod's output failed");
                break;
            }
        }
    }
}

/// SIGKILLs a pod's process group when dropped. Harmless once the group is gone (ESRCH).
struct KillGroupOnDrop(u32);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        signal_group(self.0, libc::SIGKILL);
    }
}

/// Makes the child die with the process that spawned it, so pods never outlive a killed test.
#[allow(unsafe_code)]
fn set_death_signal(command: &mut tokio::process::Command) {
    // SAFETY: prctl is async-signal-safe and touches only the calling (child) process.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Signals the process group led by `pid` (it was started as its own group's leader).
#[allow(unsafe_code)]
fn signal_group(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill has no memory effects. The group is one this kubelet started; a group that
    // is already gone yields ESRCH, which is the outcome we want.
    let sent = unsafe { libc::kill(-pid, signal) };
    if sent != 0 {
        tracing::trace!(
            pid,
            signal,
            "signalling a pod's process group: {}",
            std::io::Error::last_os_error()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/// Sets `object[path…] = value`, creating objects along the way (and replacing non-objects).
fn set_path(object: &mut Value, path: &[&str], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        *object = value;
        return;
    };
    let mut current = object;
    for key in parents {
        if !current.is_object() {
            *current = Value::Object(Map::new());
        }
        current = match current {
            Value::Object(map) => map
                .entry((*key).to_owned())
                .or_insert_with(|| Value::Object(Map::new())),
            _ => return,
        };
    }
    if !current.is_object() {
        *current = Value::Object(Map::new());
    }
    if let Value::Object(map) = current {
        map.insert((*last).to_owned(), value);
    }
}

/// RFC 7386.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(map) = target {
        for (key, value) in patch {
            if value.is_null() {
                map.remove(key);
            } else {
                merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// Five characters from the alphabet the real name generator uses.
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut bits = uuid::Uuid::new_v4().as_u128();
    let mut suffix = String::with_capacity(5);
    for _ in 0..5 {
        let index = usize::try_from(bits % ALPHABET.len() as u128).unwrap_or(0);
        suffix.push(char::from(ALPHABET.get(index).copied().unwrap_or(b'x')));
        bits /= ALPHABET.len() as u128;
    }
    suffix
}

fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                let index = ((n >> (18 - 6 * i)) & 63) as usize;
                out.push(char::from(BASE64[index]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for chunk in text.as_bytes().chunks(4) {
        let mut n = 0u32;
        let mut padding = 0;
        for (i, byte) in chunk.iter().enumerate() {
            let value = if *byte == b'=' {
                if i < 2 {
                    return None;
                }
                padding += 1;
                0
            } else {
                if padding > 0 {
                    return None;
                }
                u32::try_from(BASE64.iter().position(|c| c == byte)?).ok()?
            };
            n = (n << 6) | value;
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - padding]);
    }
    Some(out)
}

fn is_base64(text: &str) -> bool {
    base64_decode(text).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for text in ["", "a", "ab", "abc", "abcd", "ghp_secret-token"] {
            let encoded = base64_encode(text.as_bytes());
            assert_eq!(base64_decode(&encoded).as_deref(), Some(text.as_bytes()));
        }
        assert_eq!(base64_encode(b"hello"), "aGVsbG8=");
        assert!(!is_base64("not base64!"));
    }

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_709_251_199)),
            "2024-02-29T23:59:59Z"
        );
    }

    #[test]
    fn cidrs_nest() {
        let all = parse_cidr("0.0.0.0/0").expect("cidr");
        let ten = parse_cidr("10.0.0.0/8").expect("cidr");
        let v6 = parse_cidr("fc00::/7").expect("cidr");
        assert!(cidr_contains(&all, &ten));
        assert!(!cidr_contains(&ten, &all));
        assert!(!cidr_contains(&all, &v6));
    }

    #[test]
    fn selectors_match_labels() {
        let labels = json!({"job-name": "a", "tier": "x"});
        let matches = |text: &str| {
            LabelSelector::parse(text)
                .map(|s| s.matches(Some(&labels)))
                .unwrap_or(false)
        };
        assert!(matches("job-name=a"));
        assert!(matches("job-name==a,tier"));
        assert!(matches("tier!=y,!missing"));
        assert!(!matches("job-name=b"));
        assert!(LabelSelector::parse("tier in (x)").is_err());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("job-name%3Dx%2Cy"), "job-name=x,y");
        assert_eq!(percent_decode("a%2"), "a%2");
    }
}
