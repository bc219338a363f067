//! Loopback helpers.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// Next candidate for [`free_port_pair`]: tests of one binary run in
/// parallel threads, and two of them probing the same free port would both
/// get it. Each call takes its own pair from a per-process sequence.
static NEXT_PAIR: AtomicU16 = AtomicU16::new(0);

/// A free loopback port `p` such that `p + 1` is free too (swtpm uses both).
pub fn free_port_pair() -> u16 {
    // Start somewhere different in each process, below the ephemeral range.
    let base = 20_000 + (std::process::id() % 500) as u16 * 24;
    for _ in 0..2000 {
        let p = base + NEXT_PAIR.fetch_add(2, Ordering::Relaxed) % 12_000;
        let a = TcpListener::bind(("127.0.0.1", p));
        let b = TcpListener::bind(("127.0.0.1", p + 1));
        if a.is_ok() && b.is_ok() {
            return p;
        }
    }
    panic!("no free pair of loopback ports");
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
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
