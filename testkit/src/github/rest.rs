//! The HTTP front of the fake: fault injection, request recording, authentication, routing,
//! and the pieces every REST handler shares (GitHub's error bodies, pagination with `Link`
//! headers, JSON parsing). It also answers the account and repository endpoints itself.

use std::sync::Arc;

use axum::body::{Bytes, to_bytes};
use axum::extract::{Query, Request, State as AxumState};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::json::{self, DOCS};
use super::model::{GraphqlCall, Permission};
use super::state::{Shared, State};
use super::{ci, git, issues, pulls};

/// A handler's outcome; `Err` carries an error response so `?` can return it early.
pub(crate) type Reply = Result<Response, ApiError>;

/// An error answer, boxed so the `Result`s that carry it stay small.
pub(crate) struct ApiError(Box<Response>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// GitHub's own cap on request bodies is far larger than anything a test sends.
const MAX_BODY: usize = 25 * 1024 * 1024;

/// One authenticated API request.
pub(crate) struct Ctx {
    pub shared: Arc<Shared>,
    /// Lowercased login of the caller.
    pub login: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: Bytes,
}

impl Ctx {
    pub fn base(&self) -> &str {
        &self.shared.base_url
    }

    pub fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as a JSON object (400 like GitHub when it is not JSON).
    pub fn json_body(&self) -> Result<Value, ApiError> {
        let text = if self.body.is_empty() {
            &b"{}"[..]
        } else {
            &self.body[..]
        };
        match serde_json::from_slice::<Value>(text) {
            Ok(value) if value.is_object() || value.is_array() => Ok(value),
            _ => Err(error(StatusCode::BAD_REQUEST, "Problems parsing JSON")),
        }
    }

    /// The repository's key and the caller's role on it; 404 if there is no such repository.
    pub fn repo(&self, owner: &str, name: &str) -> Result<(String, Permission), ApiError> {
        let key = State::repo_key(owner, name);
        let perm = self.shared.lock().permission(&key, &self.login);
        perm.map(|perm| (key, perm)).ok_or_else(not_found)
    }
}

pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response {
    let mut response = (status, value.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert(
        "x-github-api-version-selected",
        HeaderValue::from_static("2022-11-28"),
    );
    headers.insert("x-ratelimit-limit", HeaderValue::from_static("5000"));
    headers.insert("x-ratelimit-remaining", HeaderValue::from_static("4999"));
    headers.insert("x-ratelimit-resource", HeaderValue::from_static("core"));
    if let Ok(id) = HeaderValue::try_from(uuid::Uuid::new_v4().simple().to_string().to_uppercase())
    {
        headers.insert("x-github-request-id", id);
    }
    response
}

pub(crate) fn ok(value: &Value) -> Reply {
    Ok(json_response(StatusCode::OK, value))
}

pub(crate) fn created(value: &Value) -> Reply {
    Ok(json_response(StatusCode::CREATED, value))
}

/// GitHub's error body.
pub(crate) fn error(status: StatusCode, message: &str) -> ApiError {
    let body = json!({ "message": message, "documentation_url": DOCS });
    ApiError(Box::new(json_response(status, &body)))
}

pub(crate) fn not_found() -> ApiError {
    error(StatusCode::NOT_FOUND, "Not Found")
}

pub(crate) fn forbidden(message: &str) -> ApiError {
    error(StatusCode::FORBIDDEN, message)
}

/// 422 with one field error.
pub(crate) fn invalid(resource: &str, field: &str, code: &str) -> ApiError {
    let errors = json!([{ "resource": resource, "field": field, "code": code }]);
    unprocessable(&errors)
}

/// 422 with one `custom` error carrying its own message.
pub(crate) fn invalid_custom(resource: &str, message: &str) -> ApiError {
    let errors = json!([{ "resource": resource, "code": "custom", "message": message }]);
    unprocessable(&errors)
}

fn unprocessable(errors: &Value) -> ApiError {
    let body =
        json!({ "message": "Validation Failed", "errors": errors, "documentation_url": DOCS });
    ApiError(Box::new(json_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        &body,
    )))
}

pub(crate) fn no_content() -> Reply {
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Serves one page of `items` with GitHub's `per_page`/`page` rules and `Link` header.
pub(crate) fn paginate(ctx: &Ctx, items: Vec<Value>) -> Reply {
    paginate_with(ctx, items, |item| item)
}

/// As [`paginate`], rendering only the page's own items: a listing of a thousand issues
/// rendered every one for each page, and the fault suite's fake spent a core on it.
pub(crate) fn paginate_with<T>(ctx: &Ctx, items: Vec<T>, render: impl FnMut(T) -> Value) -> Reply {
    let per_page = ctx
        .q("per_page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let page = ctx
        .q("page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let last = items.len().div_ceil(per_page).max(1);
    let slice: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(render)
        .collect();
    let mut response = json_response(StatusCode::OK, &Value::Array(slice));
    let url = |p: usize| {
        let mut query: Vec<String> = ctx
            .query
            .iter()
            .filter(|(k, _)| k != "page")
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        query.push(format!("page={p}"));
        format!("<{}{}?{}>", ctx.base(), ctx.path, query.join("&"))
    };
    let mut links = Vec::new();
    if page > 1 {
        links.push(format!("{}; rel=\"prev\"", url(page - 1)));
    }
    if page < last {
        links.push(format!("{}; rel=\"next\"", url(page + 1)));
        links.push(format!("{}; rel=\"last\"", url(last)));
    }
    if page > 1 {
        links.push(format!("{}; rel=\"first\"", url(1)));
    }
    if !links.is_empty()
        && let Ok(value) = HeaderValue::try_from(links.join(", "))
    {
        response.headers_mut().insert(header::LINK, value);
    }
    Ok(response)
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The token of `Authorization: Bearer …` or `Authorization: token …`.
fn bearer(req: &Request) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token"))
        .then(|| token.trim().to_owned())
}

/// The server's only handler: every request passes here.
pub(crate) async fn handle(AxumState(shared): AxumState<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let fault = {
        let mut st = shared.lock();
        let at = st
            .faults
            .iter()
            .position(|(prefix, _)| path.starts_with(prefix.as_str()));
        at.map(|at| st.faults.remove(at).1)
    };
    let response = match fault.map(StatusCode::from_u16) {
        Some(Ok(status)) => {
            let reason = status.canonical_reason().unwrap_or("Injected failure");
            error(status, reason).into_response()
        }
        _ => {
            let hold = {
                let mut st = shared.lock();
                let at = st.holds.iter().position(|(held_method, prefix, _)| {
                    held_method.eq_ignore_ascii_case(&method) && path.starts_with(prefix.as_str())
                });
                at.map(|at| st.holds.remove(at).2)
            };
            if let Some(hold) = hold {
                return serve_held(shared, hold, req, method, path).await;
            }
            route(&shared, req).await
        }
    };
    let status = response.status().as_u16();
    shared.mutate(|st| st.requests.push((method, path, status)));
    response
}

/// Serves a held request once it is released, on a task of its own: a client that hangs up
/// meanwhile (a worker killed while it waited) still has its request carried out and logged,
/// as GitHub would.
async fn serve_held(
    shared: Arc<Shared>,
    hold: Arc<super::state::Hold>,
    req: Request,
    method: String,
    path: String,
) -> Response {
    let served = tokio::spawn(async move {
        hold.arrived.add_permits(1);
        // Closed when the test drops its `HeldRequest`: then it is served at once.
        drop(hold.released.acquire().await);
        let response = route(&shared, req).await;
        let status = response.status().as_u16();
        shared.mutate(|st| st.requests.push((method, path, status)));
        response
    });
    match served.await {
        Ok(response) => response,
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "held request failed").into_response(),
    }
}

async fn route(shared: &Arc<Shared>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    if let Some(rest) = path.strip_prefix("/git/") {
        return git::serve(Arc::clone(shared), req, rest).await;
    }
    if let Some(rest) = path.strip_prefix(ci::LOG_PREFIX) {
        // Like GitHub's signed blob URLs: the signature is the credential.
        return ci::serve_log(shared, rest, req.uri().query().unwrap_or(""));
    }
    let login = bearer(&req).and_then(|token| shared.lock().login_for_token(&token));
    let Some(login) = login else {
        if path == "/graphql" {
            let call = GraphqlCall {
                login: None,
                query: String::new(),
                variables: Value::Null,
                ok: false,
            };
            shared.mutate(|st| st.graphql.push(call));
        }
        return error(StatusCode::UNAUTHORIZED, "Bad credentials").into_response();
    };
    let method = req.method().clone();
    let query = Query::<Vec<(String, String)>>::try_from_uri(req.uri())
        .map(|q| q.0)
        .unwrap_or_default();
    let body = match to_bytes(req.into_body(), MAX_BODY).await {
        Ok(body) => body,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large").into_response(),
    };
    let ctx = Ctx {
        shared: Arc::clone(shared),
        login,
        path: path.clone(),
        query,
        body,
    };
    let segments: Vec<String> = path.trim_matches('/').split('/').map(decode).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let reply = dispatch(&ctx, &method, &segments).await;
    reply.unwrap_or_else(IntoResponse::into_response)
}

fn number(text: &str) -> Result<u64, ApiError> {
    text.parse().map_err(|_| not_found())
}

async fn dispatch(ctx: &Ctx, method: &Method, segments: &[&str]) -> Reply {
    let m = method.as_str();
    match (m, segments) {
        ("GET", ["user"]) => me(ctx),
        ("GET", ["users", login]) => user(ctx, login),
        ("POST", ["graphql"]) => pulls::graphql(ctx).await,
        ("GET", ["repos", o, r]) => repo(ctx, o, r),
        ("GET", ["repos", o, r, "collaborators", user, "permission"]) => {
            permission(ctx, o, r, user)
        }
        ("GET", ["repos", o, r, "issues"]) => issues::list(ctx, o, r),
        ("POST", ["repos", o, r, "issues"]) => issues::create(ctx, o, r),
        ("GET", ["repos", o, r, "issues", "comments", id]) => {
            issues::get_comment(ctx, o, r, number(id)?)
        }
        ("PATCH", ["repos", o, r, "issues", "comments", id]) => {
            issues::edit_comment(ctx, o, r, number(id)?)
        }
        ("DELETE", ["repos", o, r, "issues", "comments", id]) => {
            issues::delete_comment(ctx, o, r, number(id)?)
        }
        ("GET", ["repos", o, r, "issues", "comments", id, "reactions"]) => {
            issues::list_reactions(ctx, o, r, issues::issue_comment(id)?)
        }
        ("POST", ["repos", o, r, "issues", "comments", id, "reactions"]) => {
            issues::add_reaction(ctx, o, r, issues::issue_comment(id)?)
        }
        ("GET", ["repos", o, r, "pulls", "comments", id, "reactions"]) => {
            issues::list_reactions(ctx, o, r, issues::review_comment(id)?)
        }
        ("POST", ["repos", o, r, "pulls", "comments", id, "reactions"]) => {
            issues::add_reaction(ctx, o, r, issues::review_comment(id)?)
        }
        ("GET", ["repos", o, r, "issues", n]) => issues::get(ctx, o, r, number(n)?),
        ("PATCH", ["repos", o, r, "issues", n]) => issues::edit(ctx, o, r, number(n)?),
        ("GET", ["repos", o, r, "issues", n, "comments"]) => {
            issues::list_comments(ctx, o, r, number(n)?)
        }
        ("POST", ["repos", o, r, "issues", n, "comments"]) => {
            issues::create_comment(ctx, o, r, number(n)?)
        }
        ("POST", ["repos", o, r, "issues", n, "labels"]) => {
            issues::add_labels(ctx, o, r, number(n)?)
        }
        ("DELETE", ["repos", o, r, "issues", n, "labels", name]) => {
            issues::remove_label(ctx, o, r, number(n)?, name)
        }
        ("GET", ["repos", o, r, "pulls"]) => pulls::list(ctx, o, r).await,
        ("POST", ["repos", o, r, "pulls"]) => pulls::create(ctx, o, r).await,
        ("GET", ["repos", o, r, "pulls", n]) => pulls::get(ctx, o, r, number(n)?).await,
        ("PATCH", ["repos", o, r, "pulls", n]) => pulls::edit(ctx, o, r, number(n)?).await,
        ("GET", ["repos", o, r, "pulls", n, "reviews"]) => pulls::reviews(ctx, o, r, number(n)?),
        ("GET", ["repos", o, r, "pulls", n, "comments"]) => {
            pulls::review_comments(ctx, o, r, number(n)?)
        }
        // Refs may contain slashes (`heads/feature`, `mainloop/task-1`), as GitHub allows.
        ("GET", ["repos", o, r, "commits", reference @ .., "check-runs"])
            if !reference.is_empty() =>
        {
            ci::check_runs(ctx, o, r, &reference.join("/")).await
        }
        ("GET", ["repos", o, r, "commits", reference @ .., "status"]) if !reference.is_empty() => {
            ci::status(ctx, o, r, &reference.join("/")).await
        }
        ("GET", ["repos", o, r, "actions", "jobs", id, "logs"]) => {
            ci::job_logs(ctx, o, r, number(id)?)
        }
        _ => Err(not_found()),
    }
}

fn me(ctx: &Ctx) -> Reply {
    let st = ctx.shared.lock();
    let mut value = json::user(ctx.base(), st.user(&ctx.login));
    let extra = json!({
        "name": null, "company": null, "blog": "", "location": null, "email": null,
        "hireable": null, "bio": null, "twitter_username": null, "public_repos": 0,
        "public_gists": 0, "followers": 0, "following": 0,
        "created_at": "2020-01-01T00:00:00Z", "updated_at": "2020-01-01T00:00:00Z",
    });
    if let (Some(object), Value::Object(extra)) = (value.as_object_mut(), extra) {
        object.extend(extra);
    }
    ok(&value)
}

fn user(ctx: &Ctx, login: &str) -> Reply {
    let st = ctx.shared.lock();
    let user = st.users.get(&login.to_lowercase()).ok_or_else(not_found)?;
    ok(&json::user(ctx.base(), user))
}

fn repo(ctx: &Ctx, o: &str, r: &str) -> Reply {
    let (key, perm) = ctx.repo(o, r)?;
    let st = ctx.shared.lock();
    let repo = st.repo(&key).ok_or_else(not_found)?;
    ok(&json::repo(ctx.base(), &st, repo, Some(perm)))
}

fn permission(ctx: &Ctx, o: &str, r: &str, login: &str) -> Reply {
    let (key, _) = ctx.repo(o, r)?;
    let st = ctx.shared.lock();
    let user = st.users.get(&login.to_lowercase()).ok_or_else(not_found)?;
    let perm = st.permission(&key, login).ok_or_else(not_found)?;
    let mut user = json::user(ctx.base(), user);
    user["permissions"] = json::permissions(perm);
    user["role_name"] = json!(perm.role_name());
    ok(&json!({ "permission": perm.legacy_name(), "role_name": perm.role_name(), "user": user }))
}
