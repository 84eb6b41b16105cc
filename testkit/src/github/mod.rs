//! A strict, stateful fake of GitHub for mainloop's tests: the REST endpoints mainloop uses,
//! the GraphQL mutation `markPullRequestReadyForReview`, and real git over smart HTTP.
//!
//! This module owns:
//! - one HTTP server (`rest`) that authenticates like GitHub (tokens, 401 "Bad credentials"),
//!   answers with GitHub's JSON shapes (complete enough for octocrab's models), error bodies,
//!   status codes and `Link` pagination, and records every request;
//! - real bare git repositories in a temporary directory it owns, served by
//!   `git http-backend` at `{base}/git/{owner}/{name}.git` with token-checked Basic auth and
//!   push permission (`git`);
//! - issues, pull requests, comments, reactions, reviews (`issues`, `pulls`) and scripted CI
//!   with check runs, statuses and job logs (`ci`);
//! - webhook deliveries to a receiver a test names, signed like GitHub's (`hooks`);
//! - a control API for tests: create repositories and users, act as other users (comment,
//!   react, review), merge for real, script CI, inject faults, inspect, and wait for state
//!   changes without polling (`control`, `view`).
//!
//! It depends on none of mainloop's crates: only the wire protocol is shared.

mod ci;
mod control;
mod git;
mod hooks;
mod issues;
mod json;
mod model;
mod pulls;
mod rest;
mod state;
mod view;

use crate::server::{self, Server};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// How logs and errors name this fake.
const NAME: &str = "the fake GitHub";

use anyhow::{Context as _, bail};
use axum::Router;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use hooks::Delivery;
pub use model::{
    CiScript, CiSetup, Comment, GraphqlCall, Issue, IssueState, Permission, Pull, Reaction, Review,
    ReviewComment, ReviewState,
};
pub use view::GitHubView;

use state::{AccountKind, Shared, State};

/// The login of the account the fake creates at start, standing for mainloop's bot.
pub const BOT_LOGIN: &str = "mainloop-bot";

/// A running fake GitHub. Clones share one server, which stops when the last clone is
/// dropped or on [`FakeGitHub::shutdown`]; the repositories on disk go with it.
#[derive(Clone)]
pub struct FakeGitHub {
    handle: Arc<ServerHandle>,
}

/// Owned only by [`FakeGitHub`] clones, so its drop marks the moment no test can use the
/// server any more.
struct ServerHandle {
    shared: Arc<Shared>,
    server: Server,
}

/// Configures a [`FakeGitHub`] before it starts.
#[derive(Debug, Clone)]
pub struct FakeGitHubBuilder {
    addr: SocketAddr,
    bot_login: String,
    bot_token: Option<String>,
}

impl Default for FakeGitHubBuilder {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            bot_login: BOT_LOGIN.to_owned(),
            bot_token: None,
        }
    }
}

fn new_token() -> String {
    format!("ghp_{}", uuid::Uuid::new_v4().simple())
}

impl FakeGitHubBuilder {
    /// Where to listen; port 0 picks a free port.
    #[must_use]
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    #[must_use]
    pub fn bot_login(mut self, login: impl Into<String>) -> Self {
        self.bot_login = login.into();
        self
    }

    /// The bot's token; a random `ghp_…` token otherwise.
    #[must_use]
    pub fn bot_token(mut self, token: impl Into<String>) -> Self {
        self.bot_token = Some(token.into());
        self
    }

    /// Creates the repository directory, binds and starts serving.
    ///
    /// # Errors
    /// If the temporary directory cannot be made or the address cannot be bound.
    pub async fn start(self) -> anyhow::Result<FakeGitHub> {
        let dir = tempfile::Builder::new()
            .prefix("fake-github-")
            .tempdir()
            .context("creating the fake GitHub's directory")?;
        let (git_root, git_home, scratch) = (
            dir.path().join("repos"),
            dir.path().join("home"),
            dir.path().join("scratch"),
        );
        for path in [&git_root, &git_home, &scratch] {
            tokio::fs::create_dir_all(path).await?;
        }
        let (listener, addr) = server::bind(NAME, self.addr).await?;
        let token = self.bot_token.unwrap_or_else(new_token);
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            base_url: format!("http://{addr}"),
            git_root,
            git_home,
            scratch,
            state: std::sync::Mutex::new(State::new(&self.bot_login, &token)),
            changed: Notify::new(),
            hooks_ready: Notify::new(),
            stop: stop.child_token(),
            _dir: dir,
        });
        let app = Router::new()
            .fallback(rest::handle)
            .with_state(Arc::clone(&shared));
        let server = Server::serve(NAME, listener, addr, app, stop);
        Ok(FakeGitHub {
            handle: Arc::new(ServerHandle { shared, server }),
        })
    }
}

impl FakeGitHub {
    pub fn builder() -> FakeGitHubBuilder {
        FakeGitHubBuilder::default()
    }

    /// Starts on `127.0.0.1` at a free port with the bot `mainloop-bot`.
    ///
    /// # Errors
    /// If no port can be bound or the directory cannot be made.
    pub async fn start() -> anyhow::Result<FakeGitHub> {
        Self::builder().start().await
    }

    /// Starts on a fixed port (see [`crate::ports::free_port`]).
    ///
    /// # Errors
    /// If the port cannot be bound.
    pub async fn start_on_port(port: u16) -> anyhow::Result<FakeGitHub> {
        Self::builder()
            .addr(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .start()
            .await
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    pub fn addr(&self) -> SocketAddr {
        self.handle.server.addr()
    }

    /// `http://127.0.0.1:PORT`, no trailing slash: the REST/GraphQL base (octocrab's
    /// `base_uri`).
    pub fn base_url(&self) -> String {
        self.shared().base_url.clone()
    }

    /// The clone URL of `"owner/name"`: `{base}/git/owner/name.git`.
    pub fn git_url(&self, repo: &str) -> String {
        format!(
            "{}/git/{}.git",
            self.shared().base_url,
            repo.trim_matches('/')
        )
    }

    /// The bot's token.
    pub fn token(&self) -> String {
        self.shared().lock().bot_token.clone()
    }

    pub fn bot_login(&self) -> String {
        let st = self.shared().lock();
        st.user(&st.bot).login.clone()
    }

    /// Registers a user (or returns a fresh token for an existing one) and returns a token.
    pub fn add_user(&self, login: &str) -> String {
        let token = new_token();
        self.shared().mutate(|st| {
            let key = st.add_account(login, AccountKind::User);
            st.tokens.insert(token.clone(), key);
        });
        token
    }

    /// Gives `login` a role on `"owner/name"`.
    ///
    /// # Errors
    /// If the repository or the user does not exist.
    pub fn add_collaborator(
        &self,
        repo: &str,
        login: &str,
        permission: Permission,
    ) -> anyhow::Result<()> {
        self.shared().mutate(|st| {
            let user = login.to_lowercase();
            if !st.users.contains_key(&user) {
                bail!("no user {login}: add_user first");
            }
            let repo_rec = st
                .repo_mut(&repo.to_lowercase())
                .with_context(|| format!("no repository {repo}"))?;
            repo_rec.collaborators.insert(user, permission);
            Ok(())
        })
    }

    /// Scripts the CI of `"owner/name"` for commits whose CI has not been read yet, and
    /// restarts the `FailTimes` count.
    ///
    /// # Errors
    /// If the repository does not exist.
    pub fn set_ci(&self, repo: &str, setup: impl Into<CiSetup>) -> anyhow::Result<()> {
        let setup = setup.into();
        self.shared().mutate(|st| {
            let repo_rec = st
                .repo_mut(&repo.to_lowercase())
                .with_context(|| format!("no repository {repo}"))?;
            repo_rec.ci = setup;
            repo_rec.failed_shas = 0;
            Ok(())
        })
    }

    /// The next request whose path starts with `path_prefix` (e.g. `/repos/o/r/pulls`) is
    /// answered with `status` and a GitHub error body instead of being served.
    pub fn fail_next(&self, path_prefix: &str, status: u16) {
        self.shared()
            .mutate(|st| st.faults.push((path_prefix.to_owned(), status)));
    }

    /// Holds back the next `method` request whose path starts with `path_prefix` until
    /// [`HeldRequest::release`]: then it is served, even if its client has hung up meanwhile
    /// (a request that reached GitHub whose answer was lost).
    pub fn hold_next(&self, method: &str, path_prefix: &str) -> HeldRequest {
        let hold = Arc::new(state::Hold::default());
        self.shared().mutate(|st| {
            st.holds
                .push((method.to_owned(), path_prefix.to_owned(), Arc::clone(&hold)));
        });
        HeldRequest { hold }
    }

    /// Runs `read` on a consistent snapshot of the state. `read` must not call back into
    /// the fake: the state is locked while it runs.
    pub fn view<T>(&self, read: impl FnOnce(&GitHubView<'_>) -> T) -> T {
        read(&GitHubView::new(&self.shared().lock()))
    }

    /// Waits until `predicate` holds, re-checking after every state change (requests, pushes,
    /// edits); no polling.
    ///
    /// # Errors
    /// On timeout, listing the last requests the fake answered.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut predicate: impl FnMut(&GitHubView<'_>) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let shared = self.shared();
        loop {
            // Registered before the check, so a change between the check and the wait is not lost.
            let notified = shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.view(&mut predicate) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let recent: Vec<String> = self.view(|v| {
                    let requests = v.requests();
                    let tail = &requests[requests.len().saturating_sub(10)..];
                    tail.iter()
                        .map(|(m, p, s)| format!("{m} {p} -> {s}"))
                        .collect()
                });
                bail!(
                    "timed out after {timeout:?} waiting on the fake GitHub; last requests: {recent:?}"
                );
            }
        }
    }

    /// `(method, path, status)` of every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<(String, String, u16)> {
        self.view(|v| v.requests().to_vec())
    }

    pub fn graphql_calls(&self) -> Vec<GraphqlCall> {
        self.view(|v| v.graphql_calls().to_vec())
    }

    /// Stops the server now and waits for it to close its socket.
    pub async fn shutdown(&self) {
        self.handle.server.shutdown().await;
    }
}

impl fmt::Debug for FakeGitHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeGitHub")
            .field("base_url", &self.base_url())
            .finish_non_exhaustive()
    }
}

/// A request the fake holds back: see [`FakeGitHub::hold_next`].
pub struct HeldRequest {
    hold: Arc<state::Hold>,
}

impl HeldRequest {
    /// Waits until the request has arrived and is being held.
    ///
    /// # Errors
    /// If it does not arrive within `timeout`.
    pub async fn arrived(&self, timeout: Duration) -> anyhow::Result<()> {
        match tokio::time::timeout(timeout, self.hold.arrived.acquire()).await {
            Ok(Ok(permit)) => {
                permit.forget();
                Ok(())
            }
            Ok(Err(_)) => bail!("the held request's fake is gone"),
            Err(_) => bail!("no held request arrived within {timeout:?}"),
        }
    }

    /// Serves the held request (or the next one to match, if none arrived yet).
    pub fn release(&self) {
        self.hold.released.add_permits(1);
    }
}

impl Drop for HeldRequest {
    /// A hold is never left to block a request forever.
    fn drop(&mut self) {
        self.hold.released.close();
    }
}
