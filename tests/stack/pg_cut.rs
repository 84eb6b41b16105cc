//! A TCP proxy in front of PostgreSQL that can lose one answer: the outbox relay's claim
//! commits, and the connection drops before the relay hears so. That is what a database
//! crash at the moment of a commit does, made certain instead of rare. The proxy reads the
//! wire protocol only as far as it must: which statement a transaction ran (from `Parse` and
//! `Bind`), how many rows an `UPDATE` changed (from `CommandComplete`), and its `COMMIT`.
//! Connect with `sslmode=disable`: the only untyped message is then the start-up message.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Notify};

/// What only the relay's claim runs (`Store::claim_outbox`).
const CLAIM_MARKER: &str = "attempts = attempts + 1";

pub struct PgCut {
    pub port: u16,
    armed: Arc<AtomicBool>,
    cut: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PgCut {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PgCut {
    /// Listens on a free port and forwards every connection to `upstream`.
    pub async fn start(upstream: String) -> Result<PgCut> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let armed = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(Notify::new());
        let (a, c) = (armed.clone(), cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, armed, cut) = (upstream.clone(), a.clone(), c.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        relay_connection(client, server, armed, cut).await;
                    }
                });
            }
        });
        Ok(PgCut {
            port,
            armed,
            cut,
            task,
        })
    }

    /// The next claim that takes at least one item commits, and its connection drops before
    /// the answer reaches the client.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Waits until an armed cut has happened.
    pub async fn cut(&self) {
        self.cut.notified().await;
    }
}

#[derive(Default)]
struct Conversation {
    statements: HashMap<String, String>,
    in_claim: bool,
    last_tag: String,
    /// The claim's commit went out; its answer must not come back.
    cutting: bool,
}

async fn relay_connection(
    client: TcpStream,
    server: TcpStream,
    armed: Arc<AtomicBool>,
    cut: Arc<Notify>,
) {
    let state = Arc::new(Mutex::new(Conversation::default()));
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let upward = tokio::spawn(from_client(client_read, server_write, state.clone(), armed));
    from_server(server_read, client_write, state, cut).await;
    upward.abort();
}

/// Reads one typed message: its type, and the whole message as read.
async fn read_message(from: &mut OwnedReadHalf) -> Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    from.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut message = head.to_vec();
    message.resize(1 + len, 0);
    from.read_exact(&mut message[5..]).await?;
    Ok((head[0], message))
}

/// The NUL-terminated strings at the start of a message's body.
fn strings(body: &[u8], n: usize) -> Vec<String> {
    body.split(|b| *b == 0)
        .take(n)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

async fn from_client(
    mut client: OwnedReadHalf,
    mut server: OwnedWriteHalf,
    state: Arc<Mutex<Conversation>>,
    armed: Arc<AtomicBool>,
) -> Result<()> {
    // The start-up message: a length, then the rest.
    let mut len = [0u8; 4];
    client.read_exact(&mut len).await?;
    let mut startup = len.to_vec();
    startup.resize(u32::from_be_bytes(len) as usize, 0);
    client.read_exact(&mut startup[4..]).await?;
    server.write_all(&startup).await?;
    loop {
        let (kind, message) = read_message(&mut client).await?;
        let body = &message[5..];
        {
            let mut state = state.lock().await;
            match kind {
                b'P' => {
                    let parts = strings(body, 2);
                    if let [name, sql] = parts.as_slice() {
                        state.statements.insert(name.clone(), sql.clone());
                    }
                }
                b'B' => {
                    let parts = strings(body, 2);
                    if let Some(statement) = parts.get(1)
                        && state
                            .statements
                            .get(statement)
                            .is_some_and(|sql| sql.contains(CLAIM_MARKER))
                    {
                        state.in_claim = true;
                    }
                }
                b'Q' => {
                    let sql = strings(body, 1).concat().trim().to_ascii_uppercase();
                    if sql == "COMMIT" || sql == "ROLLBACK" {
                        let took_items =
                            state.last_tag.starts_with("UPDATE ") && state.last_tag != "UPDATE 0";
                        let in_claim = std::mem::take(&mut state.in_claim);
                        state.cutting = sql == "COMMIT"
                            && in_claim
                            && took_items
                            && armed.swap(false, Ordering::SeqCst);
                    }
                }
                _ => {}
            }
        }
        server.write_all(&message).await?;
    }
}

async fn from_server(
    mut server: OwnedReadHalf,
    mut client: OwnedWriteHalf,
    state: Arc<Mutex<Conversation>>,
    cut: Arc<Notify>,
) {
    loop {
        let Ok((kind, message)) = read_message(&mut server).await else {
            return;
        };
        let mut state = state.lock().await;
        if state.cutting {
            // The commit's answer: the transaction is committed, and the client never
            // learns it. Dropping both halves closes the client's connection.
            cut.notify_one();
            return;
        }
        if kind == b'C' {
            state.last_tag = strings(&message[5..], 1).concat();
        }
        drop(state);
        if client.write_all(&message).await.is_err() {
            return;
        }
    }
}

/// `url` (a `postgres://` URL on 127.0.0.1) through the proxy at `port`, without TLS.
pub fn through(url: &str, port: u16) -> Result<String> {
    let (scheme_user, rest) = url.split_once('@').context("a URL with a user")?;
    let path = rest.split_once('/').map(|(_, p)| p).context("a database")?;
    Ok(format!(
        "{scheme_user}@127.0.0.1:{port}/{path}?sslmode=disable"
    ))
}
