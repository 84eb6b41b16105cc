//! Oversized, deeply nested and slow requests, over raw TCP against the real server loop
//! (`mainloop_api::serve`): each is answered (or cut off) within its configured limit, the
//! server stays up, and other clients are served normally meanwhile.
//!
//! The timeouts are configured short (one second) so the tests run fast; the only waiting is
//! the hostile client's own pacing, which the test drives. Each test prints its figures.

use std::time::{Duration, Instant};

use mainloop_api::AuthMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::{Served, serve};

const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
const BODY_TIMEOUT: Duration = Duration::from_secs(1);
const BODY_LIMIT: usize = 64 * 1024;
/// Generous bound on "at once" for a loaded two-core CI machine.
const QUICK: Duration = Duration::from_millis(500);
/// How long past its limit a cut-off may come (timer granularity, a loaded machine).
const SLACK: Duration = Duration::from_millis(750);

async fn start() -> Served {
    serve(AuthMode::None, "me", |settings, _| {
        settings.header_timeout = HEADER_TIMEOUT;
        settings.body_timeout = BODY_TIMEOUT;
        settings.body_limit = BODY_LIMIT;
    })
    .await
}

/// Reads until the server closes the connection (or `within` passes); what it sent.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&received).into_owned())
}

/// Status code of a raw HTTP/1.1 response.
fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

/// One ordinary request on a fresh connection; how long it took.
async fn ordinary_request(served: &Served) -> Duration {
    let started = Instant::now();
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("{}/healthz", served.base()))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("an ordinary client is served");
    assert_eq!(response.status(), 200);
    started.elapsed()
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_413_before_it_is_sent() {
    let served = start().await;
    let mut stream = TcpStream::connect(served.addr).await.expect("connect");
    let started = Instant::now();
    // Claims 1 GB and sends none of it: the answer must not wait for the body.
    stream
        .write_all(
            b"POST /api/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 1000000000\r\n\r\n{\"content\":\"",
        )
        .await
        .expect("send the head");
    let response = read_to_close(&mut stream, Duration::from_secs(5))
        .await
        .expect("the server answers and closes without the body");
    let took = started.elapsed();
    assert_eq!(status_of(&response), 413, "{response}");
    assert!(response.contains("payload_too_large"), "{response}");
    assert!(took < QUICK, "413 took {took:?}");
    println!("figure: declared 1 GB body -> 413 in {took:?}");
}

#[tokio::test]
async fn an_undeclared_body_over_the_limit_is_cut_at_the_limit() {
    let served = start().await;
    let mut stream = TcpStream::connect(served.addr).await.expect("connect");
    let started = Instant::now();
    stream
        .write_all(
            b"POST /api/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Transfer-Encoding: chunked\r\n\r\n",
        )
        .await
        .expect("send the head");
    // Chunks of 16 KiB until the server answers: it must do so after about the limit,
    // not after everything a client cares to send.
    let chunk = format!("4000\r\n{}\r\n", "a".repeat(0x4000));
    let mut sent = 0usize;
    while sent <= 64 * BODY_LIMIT {
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
        sent += 0x4000;
        let mut peek = [0u8; 1];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(1), stream.peek(&mut peek)).await
            && n > 0
        {
            break;
        }
    }
    let response = read_to_close(&mut stream, Duration::from_secs(5))
        .await
        .unwrap_or_default();
    let took = started.elapsed();
    assert_eq!(status_of(&response), 413, "{response}");
    assert!(
        sent <= 4 * BODY_LIMIT,
        "the server read {sent} bytes of a {BODY_LIMIT}-byte limit"
    );
    println!("figure: chunked body over a {BODY_LIMIT} B limit -> 413 after {sent} B, {took:?}");
}

#[tokio::test]
async fn json_nested_ten_thousand_deep_is_refused_quickly() {
    let served = start().await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let deep_array = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_object = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    let deep_in_content = format!(r#"{{"content":{deep_array}}}"#);
    // Valid JSON all, just not the object the route takes: 422, found without recursing
    // (serde_json skips unwanted values iteratively and stops typed ones at depth 128).
    for (what, path, body, status) in [
        ("array", "/api/messages", deep_array.clone(), 422),
        ("object", "/api/messages", deep_object, 422),
        ("content", "/api/messages", deep_in_content, 422),
        ("login", "/api/login", deep_array.clone(), 422),
        ("unclosed", "/api/messages", "[".repeat(10_000), 400),
    ] {
        let started = Instant::now();
        let response = http
            .post(format!("{}{path}", served.base()))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("the server answers (and did not overflow its stack)");
        let took = started.elapsed();
        assert_eq!(response.status().as_u16(), status, "{what}");
        let error: serde_json::Value = response.json().await.expect("an error body");
        assert!(error["error"]["code"].is_string(), "{what}: {error}");
        assert!(took < QUICK, "{what}: {took:?}");
        println!("figure: JSON 10,000 deep ({what}) -> {status} in {took:?}");
    }
    ordinary_request(&served).await;
}

/// Sends `bytes` one at a time, `pace` apart, until the server closes the connection;
/// returns how long after connecting that was, and what the server sent.
async fn trickle(served: &Served, bytes: &[u8], pace: Duration) -> (Duration, String) {
    let mut stream = TcpStream::connect(served.addr).await.expect("connect");
    let started = Instant::now();
    let mut ticks = tokio::time::interval(pace);
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let mut next = 0;
    loop {
        tokio::select! {
            _ = ticks.tick(), if next < bytes.len() => {
                if stream.write_all(&bytes[next..=next]).await.is_err() {
                    break;
                }
                next += 1;
            }
            read = stream.read(&mut buffer) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            },
            () = tokio::time::sleep(Duration::from_secs(30)) => panic!("never cut off"),
        }
    }
    (
        started.elapsed(),
        String::from_utf8_lossy(&received).into_owned(),
    )
}

/// Ordinary requests, one after another, until `until` resolves; their slowest time.
async fn served_meanwhile<F: std::future::Future>(
    served: &Served,
    until: F,
) -> (F::Output, Duration, usize) {
    let mut until = std::pin::pin!(until);
    let mut slowest = Duration::ZERO;
    let mut count = 0;
    loop {
        tokio::select! {
            output = &mut until => return (output, slowest, count),
            took = ordinary_request(served) => {
                slowest = slowest.max(took);
                count += 1;
            }
        }
    }
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_cut_off_while_others_are_served() {
    let served = start().await;
    let head =
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let attack = trickle(&served, head, Duration::from_millis(100));
    let ((took, response), slowest, count) = served_meanwhile(&served, attack).await;
    assert!(
        response.is_empty() || status_of(&response) == 408,
        "{response}"
    );
    assert!(
        took >= HEADER_TIMEOUT && took < HEADER_TIMEOUT + SLACK,
        "cut off after {took:?}, the limit is {HEADER_TIMEOUT:?}"
    );
    assert!(
        count > 0 && slowest < QUICK,
        "{count} others, slowest {slowest:?}"
    );
    println!(
        "figure: header trickle (1 byte/100 ms) cut off after {took:?}; \
         {count} other requests meanwhile, slowest {slowest:?}"
    );
}

#[tokio::test]
async fn a_client_trickling_its_body_gets_408_while_others_are_served() {
    let served = start().await;
    let body = format!(r#"{{"content":"{}"}}"#, "a".repeat(100));
    let request = format!(
        "POST /api/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let mut stream = TcpStream::connect(served.addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("head");
    let started = Instant::now();
    let attack = async {
        let mut ticks = tokio::time::interval(Duration::from_millis(100));
        let mut received = Vec::new();
        let mut buffer = [0u8; 4096];
        for byte in body.as_bytes().iter().cycle() {
            tokio::select! {
                _ = ticks.tick() => {
                    if stream.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                }
                read = stream.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => received.extend_from_slice(&buffer[..n]),
                },
            }
        }
        (
            started.elapsed(),
            String::from_utf8_lossy(&received).into_owned(),
        )
    };
    let ((took, response), slowest, count) = served_meanwhile(&served, attack).await;
    assert_eq!(status_of(&response), 408, "{response}");
    assert!(response.contains("body_timeout"), "{response}");
    assert!(
        took >= BODY_TIMEOUT && took < BODY_TIMEOUT + SLACK,
        "cut off after {took:?}, the limit is {BODY_TIMEOUT:?}"
    );
    assert!(
        count > 0 && slowest < QUICK,
        "{count} others, slowest {slowest:?}"
    );
    println!(
        "figure: body trickle (1 byte/100 ms) -> 408 after {took:?}; \
         {count} other requests meanwhile, slowest {slowest:?}"
    );
}

#[tokio::test]
async fn many_idle_connections_neither_block_others_nor_stay_open() {
    const IDLE: usize = 500;
    let served = start().await;
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(served.addr).await.expect("connect"));
    }
    let opened = Instant::now();
    let took = ordinary_request(&served).await;
    assert!(took < QUICK, "with {IDLE} idle connections open: {took:?}");
    // Every idle connection is closed by the server once the header timeout passes.
    let closes = idle.iter_mut().map(|stream| async move {
        read_to_close(stream, HEADER_TIMEOUT + SLACK + Duration::from_secs(2)).await
    });
    let closed = futures::future::join_all(closes).await;
    let all_closed = opened.elapsed();
    let open = closed.iter().filter(|c| c.is_none()).count();
    assert_eq!(
        open, 0,
        "{open} of {IDLE} idle connections were never closed"
    );
    assert!(all_closed < HEADER_TIMEOUT + SLACK, "{all_closed:?}");
    // A keep-alive connection that goes quiet after a request is closed the same way.
    let mut stream = TcpStream::connect(served.addr).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let response = read_to_close(&mut stream, HEADER_TIMEOUT + SLACK)
        .await
        .expect("an idle keep-alive connection is closed");
    assert_eq!(status_of(&response), 200);
    ordinary_request(&served).await;
    println!(
        "figure: {IDLE} idle connections: another request served in {took:?}; \
         all closed {all_closed:?} after opening"
    );
}
