//! The HTTP server under every fake: bound on a given (or free) address, serving an axum
//! router until told to stop or dropped, with `TCP_NODELAY` so small streamed writes leave at
//! once as they do from the real services.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Mutex, PoisonError};

use anyhow::Context as _;
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Binds `addr` for the fake called `name`; returns the listener and the address clients use
/// (a wildcard bind is reached on loopback).
pub(crate) async fn bind(
    name: &str,
    addr: SocketAddr,
) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {name} to {addr}"))?;
    let mut local = listener
        .local_addr()
        .with_context(|| format!("reading {name}'s address"))?;
    if local.ip().is_unspecified() {
        local.set_ip(Ipv4Addr::LOCALHOST.into());
    }
    Ok((listener, local))
}

/// A running fake server; stops when `stop` is cancelled, on [`Server::shutdown`], or when
/// dropped.
pub(crate) struct Server {
    addr: SocketAddr,
    stop: CancellationToken,
    name: &'static str,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Server {
    pub(crate) fn serve(
        name: &'static str,
        listener: TcpListener,
        addr: SocketAddr,
        app: Router,
        stop: CancellationToken,
    ) -> Server {
        let until = stop.clone();
        let task = tokio::spawn(async move {
            let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%error, "cannot set TCP_NODELAY");
                }
            });
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(until.cancelled_owned())
                .await;
            if let Err(error) = served {
                tracing::warn!(%error, "{name} stopped with an error");
            }
        });
        tracing::debug!(%addr, "{name} listening");
        Server {
            addr,
            stop,
            name,
            task: Mutex::new(Some(task)),
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the server task to end.
    pub(crate) async fn shutdown(&self) {
        self.stop.cancel();
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task
            && let Err(error) = task.await
        {
            tracing::warn!(%error, "{}'s server task failed", self.name);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
