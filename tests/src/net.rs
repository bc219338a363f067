//! Loopback helpers.

use std::io::BufRead;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// Next candidate port: tests of one binary run in parallel threads, and
/// two of them asking the kernel for "a free port" (bind to 0) can be handed
/// the same one before either server has bound it; ports from the ephemeral
/// range also collide with outgoing connections. So each call takes its own
/// port(s) from a per-process sequence below the ephemeral range.
static NEXT_PAIR: AtomicU16 = AtomicU16::new(0);

fn candidate() -> u16 {
    // Start somewhere different in each process.
    let base = 20_000 + (std::process::id() % 500) as u16 * 24;
    base + NEXT_PAIR.fetch_add(2, Ordering::Relaxed) % 12_000
}

/// A free loopback port `p` such that `p + 1` is free too (swtpm uses both).
pub fn free_port_pair() -> u16 {
    for _ in 0..2000 {
        let p = candidate();
        let a = TcpListener::bind(("127.0.0.1", p));
        let b = TcpListener::bind(("127.0.0.1", p + 1));
        if a.is_ok() && b.is_ok() {
            return p;
        }
    }
    panic!("no free pair of loopback ports");
}

/// A free loopback port, for a server that binds it itself.
pub fn free_port() -> u16 {
    for _ in 0..2000 {
        let p = candidate();
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free loopback port");
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Reads one HTTP/1.1 response (status line, headers, a Content-Length
/// body) from a kept-alive connection: the clients of the tests and the
/// benchmark.
pub fn read_response(reader: &mut impl BufRead) -> std::io::Result<(u16, Vec<u8>)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut len = 0usize;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("connection closed in headers"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    Ok((status, body))
}
