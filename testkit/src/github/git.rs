//! Real git for the fake: the bare repositories on disk, the git commands the fake runs on
//! them itself (initial commit, branch tips, merges, merge checks), and smart HTTP at
//! `/git/{owner}/{name}.git/...` served by running `git http-backend` as a CGI program.
//!
//! Every git process gets an empty `HOME`, `GIT_CONFIG_NOSYSTEM=1` and no terminal prompt,
//! so nothing from the machine's or the developer's configuration changes what it does.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use base64::Engine as _;
use futures::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::Command;

use super::state::{Shared, State};

const IDENTITY: [&str; 4] = [
    "-c",
    "user.name=GitHub",
    "-c",
    "user.email=noreply@github.com",
];

/// A `git` command with the fake's isolated environment.
fn git(home: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .args(IDENTITY)
        .args([
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        // A test run inside a git hook would otherwise point us at the caller's repository.
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs git in `dir`, returning trimmed stdout; fails on a non-zero exit.
pub(crate) async fn run(home: &Path, dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = git(home, dir)
        .args(args)
        .output()
        .await
        .with_context(|| format!("starting `git {}`", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`git {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Runs git in `dir` and reports whether it exited 0; other exits are not errors.
async fn succeeds(home: &Path, dir: &Path, args: &[&str]) -> anyhow::Result<bool> {
    let status = git(home, dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .with_context(|| format!("starting `git {}`", args.join(" ")))?;
    Ok(status.success())
}

/// Creates the bare repository `key` with one commit on `main` holding `files`.
pub(crate) async fn init_repo(
    shared: &Shared,
    key: &str,
    files: &[(&str, &str)],
) -> anyhow::Result<()> {
    let bare = shared.bare_path(key);
    if bare.exists() {
        bail!("repository {key} already exists on disk");
    }
    let parent = bare
        .parent()
        .context("bare repository path has no parent")?;
    tokio::fs::create_dir_all(parent).await?;
    let bare_str = bare.to_str().context("non-UTF-8 repository path")?;
    run(
        &shared.git_home,
        parent,
        &["init", "--quiet", "--bare", "-b", "main", bare_str],
    )
    .await?;
    // http-backend allows pushes from authenticated users anyway; say so explicitly.
    run(
        &shared.git_home,
        &bare,
        &["config", "http.receivepack", "true"],
    )
    .await?;

    let work = tempfile::tempdir_in(&shared.scratch)?;
    run(
        &shared.git_home,
        work.path(),
        &["init", "--quiet", "-b", "main"],
    )
    .await?;
    for (path, content) in files {
        let file = work.path().join(path);
        if let Some(dir) = file.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        tokio::fs::write(&file, content).await?;
    }
    run(&shared.git_home, work.path(), &["add", "--all"]).await?;
    run(
        &shared.git_home,
        work.path(),
        &["commit", "--quiet", "-m", "Initial commit"],
    )
    .await?;
    run(
        &shared.git_home,
        work.path(),
        &["push", "--quiet", bare_str, "main"],
    )
    .await?;
    Ok(())
}

/// Branch name to tip SHA, read from the bare repository.
pub(crate) async fn branch_tips(
    shared: &Shared,
    key: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let bare = shared.bare_path(key);
    let out = run(
        &shared.git_home,
        &bare,
        &[
            "for-each-ref",
            "--format=%(objectname) %(refname:lstrip=2)",
            "refs/heads",
        ],
    )
    .await?;
    Ok(out
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(sha, name)| (name.to_owned(), sha.to_owned()))
        .collect())
}

/// Re-reads a repository's branch tips into the state (waking waiters). Returns them.
pub(crate) async fn refresh_tips(
    shared: &Shared,
    key: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let tips = branch_tips(shared, key).await?;
    shared.mutate(|st| st.set_tips(key, tips.clone()));
    Ok(tips)
}

/// The commit a ref (SHA, branch, tag) names, if any.
pub(crate) async fn resolve(
    shared: &Shared,
    key: &str,
    rev: &str,
) -> anyhow::Result<Option<String>> {
    let bare = shared.bare_path(key);
    let spec = format!("{rev}^{{commit}}");
    let args = [
        "rev-parse",
        "--verify",
        "--quiet",
        "--end-of-options",
        spec.as_str(),
    ];
    let out = git(&shared.git_home, &bare)
        .args(args)
        .output()
        .await
        .context("starting `git rev-parse`")?;
    // `--verify --quiet` exits 1 with no output for a name that resolves to nothing.
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()))
}

/// How many commits `head` has that `base` lacks.
pub(crate) async fn ahead(
    shared: &Shared,
    key: &str,
    base: &str,
    head: &str,
) -> anyhow::Result<u64> {
    let range = format!("refs/heads/{base}..refs/heads/{head}");
    let out = run(
        &shared.git_home,
        &shared.bare_path(key),
        &["rev-list", "--count", &range],
    )
    .await?;
    Ok(out.parse()?)
}

/// Whether `head` merges into `base` without conflicts (`git merge-tree`, no worktree).
pub(crate) async fn mergeable(
    shared: &Shared,
    key: &str,
    base: &str,
    head: &str,
) -> anyhow::Result<bool> {
    let (base, head) = (format!("refs/heads/{base}"), format!("refs/heads/{head}"));
    let args = ["merge-tree", "--write-tree", base.as_str(), head.as_str()];
    succeeds(&shared.git_home, &shared.bare_path(key), &args).await
}

/// `(sha, subject)` of the commits reachable from `branch`, newest first.
pub(crate) async fn commits(
    shared: &Shared,
    key: &str,
    branch: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let reference = format!("refs/heads/{branch}");
    let out = run(
        &shared.git_home,
        &shared.bare_path(key),
        &["log", "--format=%H%x09%s", &reference, "--"],
    )
    .await?;
    Ok(out
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(sha, subject)| (sha.to_owned(), subject.to_owned()))
        .collect())
}

/// Merges `head` into `base` with a merge commit, as GitHub's merge button does: on the server,
/// in the bare repository, with no clone or worktree (`merge-tree`, `commit-tree`, then
/// `update-ref` from the base's old tip, so a push that moved the base meanwhile fails the
/// merge instead of being lost). Returns the merge commit's SHA and the head's tip it merged.
///
/// A clone, merge and push took about 140 ms a merge and grew with the repository; a person
/// merging sixty pull requests made it most of a throughput benchmark's time.
pub(crate) async fn merge(
    shared: &Shared,
    key: &str,
    base: &str,
    head: &str,
    message: &str,
) -> anyhow::Result<(String, String)> {
    let bare = shared.bare_path(key);
    let home = &shared.git_home;
    let (base_ref, head_ref) = (format!("refs/heads/{base}"), format!("refs/heads/{head}"));
    let verify = |reference| {
        [
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            reference,
        ]
    };
    let base_tip = run(home, &bare, &verify(base_ref.as_str()))
        .await
        .with_context(|| format!("base branch {base} is gone"))?;
    let head_tip = run(home, &bare, &verify(head_ref.as_str()))
        .await
        .with_context(|| format!("head branch {head} is gone"))?;
    let tree = match run(
        home,
        &bare,
        &["merge-tree", "--write-tree", &base_tip, &head_tip],
    )
    .await
    {
        // The tree's id is the first line; a conflict is exit status 1, the error arm.
        Ok(out) => out.lines().next().unwrap_or_default().to_owned(),
        Err(error) => bail!("{head} does not merge cleanly into {base}: {error:#}"),
    };
    let commit = run(
        home,
        &bare,
        &[
            "commit-tree",
            &tree,
            "-p",
            &base_tip,
            "-p",
            &head_tip,
            "-m",
            message,
        ],
    )
    .await?;
    run(home, &bare, &["update-ref", &base_ref, &commit, &base_tip]).await?;
    Ok((commit, head_tip))
}

// ---------------------------------------------------------------------------------------------
// Smart HTTP
// ---------------------------------------------------------------------------------------------

fn plain(status: StatusCode, text: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text.to_owned(),
    )
        .into_response()
}

/// The token of an `Authorization: Basic` header (the password; the username is ignored).
fn basic_password(req: &Request) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    decoded
        .split_once(':')
        .map(|(_, password)| password.to_owned())
}

/// Serves `/git/{owner}/{name}.git/{rest}`; `path` is the request path after `/git/`.
pub(crate) async fn serve(shared: Arc<Shared>, req: Request, path: &str) -> Response {
    let mut parts = path.splitn(3, '/');
    let (owner, repo_dir, rest) = (parts.next(), parts.next(), parts.next());
    let (Some(owner), Some(name), Some(rest)) =
        (owner, repo_dir.and_then(|r| r.strip_suffix(".git")), rest)
    else {
        return plain(StatusCode::NOT_FOUND, "Repository not found.\n");
    };
    let key = State::repo_key(owner, name);
    let query = req.uri().query().unwrap_or("").to_owned();
    let receive = match rest {
        "info/refs" if query.contains("service=git-receive-pack") => true,
        "info/refs" | "git-upload-pack" => false,
        "git-receive-pack" => true,
        // Only the smart protocol is served, as on GitHub.
        _ => return plain(StatusCode::NOT_FOUND, "Not Found\n"),
    };
    let unauthorized = || {
        let mut response = plain(StatusCode::UNAUTHORIZED, "Invalid username or token.\n");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"GitHub\""),
        );
        response
    };
    let Some(token) = basic_password(&req) else {
        return unauthorized();
    };
    let (login, perm, full_name) = {
        let st = shared.lock();
        let Some(login) = st.login_for_token(&token) else {
            drop(st);
            return unauthorized();
        };
        let Some(repo) = st.repo(&key) else {
            return plain(StatusCode::NOT_FOUND, "Repository not found.\n");
        };
        (
            st.user(&login).login.clone(),
            st.permission(&key, &login),
            repo.full_name(),
        )
    };
    if receive && !perm.is_some_and(|p| p.can_push()) {
        let text = format!("Permission to {full_name}.git denied to {login}.\n");
        return plain(StatusCode::FORBIDDEN, &text);
    }
    match cgi(&shared, req, &key, rest, &query, &login).await {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(error = format!("{error:#}"), "git http-backend failed");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "git http-backend failed\n",
            )
        }
    }
}

async fn cgi(
    shared: &Arc<Shared>,
    req: Request,
    key: &str,
    rest: &str,
    query: &str,
    login: &str,
) -> anyhow::Result<Response> {
    let receive_post = rest == "git-receive-pack";
    let headers = req.headers();
    let (content_type, encoding, protocol, length) = (
        header_text(headers, header::CONTENT_TYPE),
        header_text(headers, header::CONTENT_ENCODING),
        header_text(headers, HeaderName::from_static("git-protocol")),
        header_text(headers, header::CONTENT_LENGTH),
    );
    let method = req.method().to_string();
    // The request itself is not `Sync`; only its body travels past this point.
    let mut body = req.into_body().into_data_stream();
    let mut cmd = git(&shared.git_home, &shared.git_root);
    cmd.arg("http-backend")
        .env("GIT_PROJECT_ROOT", &shared.git_root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", format!("/{key}.git/{rest}"))
        .env("QUERY_STRING", query)
        .env("REQUEST_METHOD", method)
        .env("CONTENT_TYPE", content_type)
        // git http-backend inflates gzip request bodies itself when told the encoding.
        .env("HTTP_CONTENT_ENCODING", encoding)
        .env("HTTP_GIT_PROTOCOL", protocol)
        .env("REMOTE_USER", login)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Without CONTENT_LENGTH (chunked uploads) http-backend reads the body to EOF.
    if !length.is_empty() {
        cmd.env("CONTENT_LENGTH", length);
    }
    let mut child = cmd.spawn().context("starting git http-backend")?;
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        bail!("git http-backend has no pipes");
    };
    tokio::spawn(async move {
        while let Some(chunk) = body.next().await {
            let written = match chunk {
                Ok(chunk) => stdin.write_all(&chunk).await,
                Err(error) => {
                    tracing::debug!(%error, "git client's request body broke off");
                    break;
                }
            };
            if let Err(error) = written {
                tracing::debug!(%error, "git http-backend stopped reading its input");
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut text = String::new();
        if stderr.read_to_string(&mut text).await.is_ok() && !text.trim().is_empty() {
            tracing::debug!(stderr = text.trim(), "git http-backend");
        }
    });

    // CGI output: header lines, a blank line, then the body.
    let mut head = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    let split = loop {
        if let Some(at) = find_blank_line(&head) {
            break at;
        }
        if head.len() > 64 * 1024 {
            bail!("git http-backend sent oversized CGI headers");
        }
        let n = stdout.read(&mut buf).await?;
        if n == 0 {
            let status = child.wait().await?;
            bail!("git http-backend exited ({status}) before its headers");
        }
        head.extend_from_slice(&buf[..n]);
    };
    let (header_end, body_start) = split;
    let leftover = Bytes::copy_from_slice(&head[body_start..]);
    let mut response = Response::new(Body::empty());
    for line in String::from_utf8_lossy(&head[..header_end]).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().and_then(|c| c.parse().ok());
            *response.status_mut() = code
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::OK);
        } else if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.trim()),
            HeaderValue::try_from(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    let shared = Arc::clone(shared);
    let key = key.to_owned();
    let stream = async_stream::stream! {
        if !leftover.is_empty() {
            yield Ok::<Bytes, std::io::Error>(leftover);
        }
        loop {
            match stdout.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => yield Ok(Bytes::copy_from_slice(&buf[..n])),
                Err(error) => {
                    yield Err(error);
                    break;
                }
            }
        }
        match child.wait().await {
            Ok(status) if !status.success() => tracing::debug!(%status, "git http-backend exited"),
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, "waiting for git http-backend"),
        }
        // Refresh before the body ends, so a client whose push returned sees the new tips.
        if receive_post && let Err(error) = refresh_tips(&shared, &key).await {
            tracing::warn!(error = format!("{error:#}"), "reading branch tips after a push");
        }
    };
    *response.body_mut() = Body::from_stream(stream);
    Ok(response)
}

fn header_text(headers: &HeaderMap, name: HeaderName) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// `(end of headers, start of body)` if `bytes` holds a complete CGI header block.
fn find_blank_line(bytes: &[u8]) -> Option<(usize, usize)> {
    let crlf = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| (at, at + 4));
    let lf = bytes
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|at| (at, at + 2));
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}
