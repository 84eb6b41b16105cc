//! Free TCP ports on loopback for servers that must be told their port up front.

use std::net::{Ipv4Addr, TcpListener};

/// A port that was free a moment ago. Another process could take it before the caller binds
/// it; on a test machine that race is rare enough, and a server that fails to bind fails
/// loudly.
pub fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}
