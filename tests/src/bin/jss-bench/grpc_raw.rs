//! A gRPC load generator as lean as the HTTP one (`client`): one blocking
//! unix socket read after poll() (see `http::wait_readable`), the FetchJWTSVID request framed once (RFC 9113 frames,
//! HPACK without the dynamic table, RFC 7541 section 6.2.2) and re-sent
//! on a new stream id per call, as h2load does for HTTP/2. A call counts
//! when its DATA frame decodes to a JWTSVIDResponse with one SVID and the
//! stream ends; anything else (a trailers-only refusal, RST_STREAM,
//! GOAWAY) is an error.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use jss::spiffe::proto::{JwtsvidRequest, JwtsvidResponse};
use tonic_prost::prost::Message as _;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
/// Connection window given back once this much DATA has arrived.
const WINDOW_CHUNK: u32 = 1 << 24;

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK string literal, not Huffman-coded (all ours are < 127 bytes).
fn literal(out: &mut Vec<u8>, s: &str) {
    out.push(u8::try_from(s.len()).unwrap_or(127));
    out.extend_from_slice(s.as_bytes());
}

/// The header block of every call: static-table entries and literals
/// "without indexing", so no call changes either side's dynamic table.
fn header_block() -> Vec<u8> {
    let mut h = vec![0x83, 0x86]; // :method POST, :scheme http
    h.push(0x04); // :path, name from the static table
    literal(&mut h, "/SpiffeWorkloadAPI/FetchJWTSVID");
    h.push(0x01); // :authority
    literal(&mut h, "localhost");
    h.extend_from_slice(&[0x0f, 0x10]); // content-type (static index 31)
    literal(&mut h, "application/grpc");
    for (name, value) in [("te", "trailers"), ("workload.spiffe.io", "true")] {
        h.push(0x00);
        literal(&mut h, name);
        literal(&mut h, value);
    }
    h
}

struct Conn {
    io: UnixStream,
    /// What was read; `buf[at..end]` is not parsed yet.
    buf: Vec<u8>,
    at: usize,
    end: usize,
    next_stream: u32,
    unacked_data: u32,
    headers: Vec<u8>,
    message: Vec<u8>,
}

impl Conn {
    fn open(socket: &str) -> anyhow::Result<Conn> {
        let mut io = UnixStream::connect(socket).with_context(|| format!("connect to {socket}"))?;
        let mut hello = PREFACE.to_vec();
        frame(&mut hello, SETTINGS, 0, 0, &[]);
        // The connection window starts at 64 KiB: open it to what we
        // give back in chunks, or the server stalls after ~60 answers.
        frame(
            &mut hello,
            WINDOW_UPDATE,
            0,
            0,
            &(4 * WINDOW_CHUNK).to_be_bytes(),
        );
        io.write_all(&hello).context("send the HTTP/2 preface")?;
        let req = JwtsvidRequest {
            audience: vec!["vault".into()],
            spiffe_id: String::new(),
        }
        .encode_to_vec();
        let mut message = vec![0u8];
        message.extend_from_slice(&u32::try_from(req.len())?.to_be_bytes());
        message.extend_from_slice(&req);
        Ok(Conn {
            io,
            buf: vec![0; 1 << 16],
            at: 0,
            end: 0,
            next_stream: 1,
            unacked_data: 0,
            headers: header_block(),
            message,
        })
    }

    /// The next frame: (type, flags, stream, payload range in `buf`).
    fn next_frame(&mut self) -> anyhow::Result<(u8, u8, u32, std::ops::Range<usize>)> {
        loop {
            let avail = &self.buf[self.at..self.end];
            let need = avail.get(..3).map_or(9, |l| {
                9 + (usize::from(l[0]) << 16 | usize::from(l[1]) << 8 | usize::from(l[2]))
            });
            if avail.len() >= need {
                let stream =
                    u32::from_be_bytes([avail[5], avail[6], avail[7], avail[8]]) & 0x7fff_ffff;
                let (kind, flags) = (avail[3], avail[4]);
                let start = self.at + 9;
                self.at += need;
                return Ok((kind, flags, stream, start..self.at));
            }
            // Keep the partial frame at the front; grow only for a big one.
            self.buf.copy_within(self.at..self.end, 0);
            self.end -= self.at;
            self.at = 0;
            if self.buf.len() < need {
                self.buf.resize(need, 0);
            }
            // As the HTTP client does: no second wake-up per answer.
            crate::http::wait_readable(&self.io).context("wait for the server")?;
            let n = self
                .io
                .read(&mut self.buf[self.end..])
                .context("read from the server")?;
            ensure!(n > 0, "the server closed the connection");
            self.end += n;
        }
    }

    /// One FetchJWTSVID; Ok(true) when it returned one SVID.
    fn call(&mut self) -> anyhow::Result<bool> {
        let stream = self.next_stream;
        self.next_stream += 2;
        let mut out = Vec::with_capacity(128);
        if self.unacked_data >= WINDOW_CHUNK {
            frame(
                &mut out,
                WINDOW_UPDATE,
                0,
                0,
                &self.unacked_data.to_be_bytes(),
            );
            self.unacked_data = 0;
        }
        frame(&mut out, HEADERS, END_HEADERS, stream, &self.headers);
        frame(&mut out, DATA, END_STREAM, stream, &self.message);
        self.io.write_all(&out).context("send a request")?;
        let mut svids = None;
        loop {
            let (kind, flags, on, range) = self.next_frame()?;
            let len = u32::try_from(range.len())?;
            match kind {
                SETTINGS if flags & ACK == 0 => {
                    let mut ack = Vec::new();
                    frame(&mut ack, SETTINGS, ACK, 0, &[]);
                    self.io.write_all(&ack).context("acknowledge SETTINGS")?;
                }
                PING if flags & ACK == 0 => {
                    let mut pong = Vec::new();
                    let payload = self.buf[range].to_vec();
                    frame(&mut pong, PING, ACK, 0, &payload);
                    self.io.write_all(&pong).context("answer a PING")?;
                }
                GOAWAY => bail!("the server sent GOAWAY"),
                RST_STREAM if on == stream => return Ok(false),
                DATA if on == stream => {
                    self.unacked_data += len;
                    let mut body = &self.buf[range];
                    if flags & PADDED != 0 {
                        let pad = usize::from(*body.first().context("empty padded DATA")?);
                        body = body
                            .get(1..body.len().saturating_sub(pad))
                            .context("bad padding")?;
                    }
                    // One length-prefixed message (gRPC over HTTP/2).
                    let decoded = body.get(5..).and_then(|m| JwtsvidResponse::decode(m).ok());
                    svids = Some(
                        decoded
                            .map_or(0, |r| r.svids.iter().filter(|s| !s.svid.is_empty()).count()),
                    );
                    if flags & END_STREAM != 0 {
                        return Ok(false); // no trailers: no grpc-status
                    }
                }
                HEADERS if on == stream && flags & END_STREAM != 0 => {
                    return Ok(svids == Some(1));
                }
                _ => {} // response headers, WINDOW_UPDATE, acks
            }
        }
    }
}

/// `grpc-client SOCKET SECONDS`: FetchJWTSVID for `vault` until the time is
/// up; prints `errors N` and one latency in microseconds per line.
pub fn client_main(args: &[String]) -> anyhow::Result<()> {
    let (socket, seconds) = crate::e2e::client_args(args, "grpc-client")?;
    let mut conn = Conn::open(socket)?;
    let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
    let mut errors = 0u64;
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        let t = Instant::now();
        match conn.call() {
            Ok(true) => lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX)),
            Ok(false) => errors += 1,
            Err(_) => {
                errors += 1;
                conn = Conn::open(socket)?;
            }
        }
    }
    crate::e2e::print_samples(&lat, errors);
    Ok(())
}
