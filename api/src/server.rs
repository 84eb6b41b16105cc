//! The HTTP/1.1 server loop and its defences against slow and oversized clients.
//!
//! `axum::serve` sets no timer, so hyper's header read timeout never fires there: a client
//! that sends its headers one byte a second (slowloris), or opens a connection and says
//! nothing, holds it forever. Here every connection must finish its request headers within
//! `header_timeout` (an idle keep-alive connection too: the clock starts when hyper waits
//! for the next request), and [`read_body`] must receive the whole body within
//! `body_timeout` and no more than `body_limit` bytes of it, refusing a declared
//! `Content-Length` over the limit before reading any of it.
//!
//! HTTP/2 is not offered: the API sits behind a proxy or is reached directly from a
//! browser, both over HTTP/1.1, and h2c's protocol detection would read the first bytes
//! without any deadline.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::{Listener, ListenerExt};
use bytes::BytesMut;
use futures::StreamExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::error::{ApiError, code};

/// How much of a request the server waits for, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct BodyRules {
    /// Largest request body accepted, in bytes.
    pub limit: usize,
    /// Longest the whole body may take to arrive.
    pub timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then lets in-flight requests
/// finish. Handlers can read the peer's address as `ConnectInfo<SocketAddr>`.
pub(crate) async fn run(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // Streamed replies are many small writes; Nagle's algorithm would hold each one back
    // until the previous is acknowledged (up to 40 ms with delayed ACKs).
    let mut listener = listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    // Each connection holds a receiver; the server is done when all are dropped.
    let (open_tx, open_rx) = watch::channel(());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let service = app.clone().map_request(move |request: Request<Incoming>| {
            let mut request = request.map(Body::new);
            request
                .extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(peer));
            request
        });
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let shutdown = shutdown.clone();
        let open = open_rx.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => log_end(result),
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    log_end(connection.await);
                }
            }
            drop(open);
        });
    }
    drop(open_rx);
    drop(listener);
    open_tx.closed().await;
    Ok(())
}

fn log_end(result: Result<(), hyper::Error>) {
    if let Err(error) = result {
        // Timeouts, resets and malformed requests: the client's problem, not ours.
        tracing::debug!(%error, "connection ended");
    }
}

/// Middleware: the whole request body, read before the handler runs, within the rules.
pub(crate) async fn read_body(
    State(rules): State<BodyRules>,
    request: Request,
    next: Next,
) -> Response {
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > rules.limit as u64) {
        return too_large();
    }
    let (parts, body) = request.into_parts();
    let mut stream = body.into_data_stream();
    let collect = async {
        let mut buffer = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| Refusal::Broken)?;
            if buffer.len() + chunk.len() > rules.limit {
                return Err(Refusal::TooLarge);
            }
            buffer.extend_from_slice(&chunk);
        }
        Ok(buffer.freeze())
    };
    match tokio::time::timeout(rules.timeout, collect).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(Refusal::TooLarge)) => too_large(),
        Ok(Err(Refusal::Broken)) => closing(ApiError::bad_request(
            code::INVALID_BODY,
            "the request body could not be read",
        )),
        Err(_) => closing(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            code::BODY_TIMEOUT,
            "the request body took too long to arrive",
        )),
    }
}

enum Refusal {
    TooLarge,
    Broken,
}

fn too_large() -> Response {
    closing(ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        code::PAYLOAD_TOO_LARGE,
        "the body is larger than this server accepts",
    ))
}

/// The rest of the body is not read, so the connection cannot carry another request.
fn closing(error: ApiError) -> Response {
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
