//! A minimal HTTP/1.1 keep-alive client: the load generators must cost as
//! little as possible next to the server they measure.

use std::io::{BufReader, Read, Write};

pub struct Conn<S: Read + Write> {
    reader: BufReader<S>,
}

impl<S: Read + Write + std::os::fd::AsFd> Conn<S> {
    pub fn new(stream: S) -> Self {
        Self {
            reader: BufReader::with_capacity(16 * 1024, stream),
        }
    }

    /// Sends `request` (a complete HTTP/1.1 request) and returns status and body.
    pub fn exchange(&mut self, request: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        self.reader.get_mut().write_all(request)?;
        wait_readable(self.reader.get_ref())?;
        jss_tests::net::read_response(&mut self.reader)
    }
}

/// Blocks until `fd` is readable. A thread asleep in read() on a unix socket
/// is also woken when the server consumes the request (a write-space wakeup
/// on the same wait queue) and goes back to sleep; poll() filters that out,
/// as event-loop clients (epoll) do. Without it every answer costs the
/// client, and the server's CPU that delivers the wakeup, a second wakeup.
pub fn wait_readable(fd: &impl std::os::fd::AsFd) -> std::io::Result<()> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    loop {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}
