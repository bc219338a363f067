//! Rewrites the HTTP/2 `:authority` of requests arriving on the SPIFFE socket.
//!
//! gRPC C-core clients (grpc-python ≥ 1.57, hence py-spiffe; grpc-java)
//! send the unix socket path, percent-encoded, as `:authority`. That is no
//! RFC 3986 host, and h2 (under tonic) resets such a stream with
//! PROTOCOL_ERROR, so those clients could never talk to us. The authority
//! means nothing on a unix socket, so before h2 parses a HEADERS frame its
//! `:authority` value is replaced by `l`.
//!
//! HPACK (RFC 7541) keeps a dynamic table on both ends; only the value of
//! an `:authority` field changes, never the representation, so both tables
//! hold the same entries at the same indices. The new value is 1 byte, no
//! longer than any non-empty value, so our table is never fuller than the
//! client's and evicts no entry the client still refers to.

/// HTTP/2 connection preface (RFC 9113, section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// `:authority` in the HPACK static table.
const AUTHORITY_INDEX: u64 = 1;
/// `:authority` as a literal, not Huffman-coded, name (length byte first).
const AUTHORITY_LITERAL: &[u8] = b"\x0a:authority";
const NEW_AUTHORITY: &[u8] = b"l";

/// Client-to-server bytes in, the same bytes with `:authority` rewritten out.
#[derive(Debug, Default)]
pub struct AuthorityRewriter {
    pending: Vec<u8>,
    preface_seen: bool,
}

impl AuthorityRewriter {
    /// Takes bytes read from the client; returns what h2 may read now
    /// (whole frames; a partial frame waits for the rest).
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::with_capacity(self.pending.len());
        let mut at = 0;
        if !self.preface_seen {
            let n = PREFACE.len().min(self.pending.len());
            if self.pending[..n] != PREFACE[..n] {
                // Not HTTP/2 prior knowledge: pass everything through untouched.
                self.preface_seen = true;
                return std::mem::take(&mut self.pending);
            }
            if n < PREFACE.len() {
                return out;
            }
            out.extend_from_slice(PREFACE);
            at = PREFACE.len();
            self.preface_seen = true;
        }
        while let Some(head) = self.pending.get(at..at + 9) {
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let Some(payload) = self.pending.get(at + 9..at + 9 + len) else {
                break;
            };
            let (kind, flags) = (head[3], head[4]);
            match (kind == HEADERS && flags & END_HEADERS != 0)
                .then(|| rewrite_headers(flags, payload))
                .flatten()
            {
                Some((flags, payload)) => {
                    let n = payload.len();
                    out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags]);
                    out.extend_from_slice(&head[5..9]);
                    out.extend_from_slice(&payload);
                }
                None => out.extend_from_slice(&self.pending[at..at + 9 + len]),
            }
            at += 9 + len;
        }
        self.pending.drain(..at);
        out
    }
}

/// A HEADERS payload with `:authority` rewritten (and padding dropped);
/// `None` to pass the frame on as it is.
fn rewrite_headers(flags: u8, payload: &[u8]) -> Option<(u8, Vec<u8>)> {
    let mut p = payload;
    if flags & PADDED != 0 {
        let pad = usize::from(*p.first()?);
        p = p.get(1..p.len().checked_sub(pad)?)?;
    }
    let prio = if flags & PRIORITY != 0 { 5 } else { 0 };
    let (prio_bytes, block) = (p.get(..prio)?, p.get(prio..)?);
    let block = rewrite_block(block)?;
    let mut out = Vec::with_capacity(prio + block.len());
    out.extend_from_slice(prio_bytes);
    out.extend_from_slice(&block);
    Some((flags & !PADDED, out))
}

/// An HPACK header block with every `:authority` literal value replaced;
/// `None` when it holds none or does not parse.
fn rewrite_block(block: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len());
    let mut i = 0;
    let mut changed = false;
    while i < block.len() {
        let b = block[i];
        let prefix_bits = match b {
            _ if b & 0x80 != 0 => 7, // indexed field
            _ if b & 0x40 != 0 => 6, // literal, incremental indexing
            _ if b & 0x20 != 0 => 5, // table size update
            _ => 4,                  // literal without / never indexed
        };
        let start = i;
        let index = integer(block, &mut i, prefix_bits)?;
        if b & 0x80 != 0 || (b & 0xC0 == 0 && b & 0x20 != 0) {
            out.extend_from_slice(&block[start..i]);
            continue;
        }
        // The name: static `:authority`, or a literal one (gRPC C-core
        // writes it out, not Huffman-coded).
        let is_authority = if index == 0 {
            let name_at = i;
            skip_string(block, &mut i)?;
            block.get(name_at..i) == Some(AUTHORITY_LITERAL)
        } else {
            index == AUTHORITY_INDEX
        };
        let value_at = i;
        skip_string(block, &mut i)?;
        out.extend_from_slice(&block[start..value_at]);
        if is_authority {
            out.push(NEW_AUTHORITY.len() as u8); // not Huffman-coded, short length
            out.extend_from_slice(NEW_AUTHORITY);
            changed = true;
        } else {
            out.extend_from_slice(&block[value_at..i]);
        }
    }
    changed.then_some(out)
}

/// An HPACK integer with an N-bit prefix (RFC 7541, section 5.1).
fn integer(block: &[u8], i: &mut usize, prefix_bits: u32) -> Option<u64> {
    let max = (1u64 << prefix_bits) - 1;
    let mut v = u64::from(*block.get(*i)?) & max;
    *i += 1;
    if v < max {
        return Some(v);
    }
    let mut shift = 0;
    loop {
        let b = *block.get(*i)?;
        *i += 1;
        v = v.checked_add(u64::from(b & 0x7f).checked_shl(shift)?)?;
        shift += 7;
        if b & 0x80 == 0 || shift > 56 {
            return (b & 0x80 == 0).then_some(v);
        }
    }
}

/// Skips an HPACK string literal (RFC 7541, section 5.2).
fn skip_string(block: &[u8], i: &mut usize) -> Option<()> {
    let len = usize::try_from(integer(block, i, 7)?).ok()?;
    *i = i.checked_add(len).filter(|end| *end <= block.len())?;
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let n = payload.len();
        let mut f = vec![
            (n >> 16) as u8,
            (n >> 8) as u8,
            n as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.extend_from_slice(payload);
        f
    }

    /// `:method POST` (indexed 3), `:authority` literal with incremental
    /// indexing (0x41) = "tmp%2Fx.sock", `:path` literal (0x44) "/a".
    fn block(authority: &[u8]) -> Vec<u8> {
        let mut b = vec![0x83, 0x41, authority.len() as u8];
        b.extend_from_slice(authority);
        b.extend_from_slice(&[0x44, 2, b'/', b'a']);
        b
    }

    #[test]
    fn authority_is_replaced_whatever_the_split() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, &[])); // SETTINGS
        input.extend(frame(HEADERS, END_HEADERS, &block(b"tmp%2Fx.sock")));
        input.extend(frame(0x0, 0, b"data"));
        let mut want = PREFACE.to_vec();
        want.extend(frame(0x4, 0, &[]));
        want.extend(frame(HEADERS, END_HEADERS, &block(b"l")));
        want.extend(frame(0x0, 0, b"data"));
        for split in 0..input.len() {
            let mut r = AuthorityRewriter::default();
            let mut got = r.feed(&input[..split]);
            got.extend(r.feed(&input[split..]));
            assert_eq!(got, want, "split at {split}");
        }
    }

    #[test]
    fn padding_and_priority_are_handled_and_other_frames_untouched() {
        let mut payload = vec![3]; // pad length
        payload.extend_from_slice(&[0, 0, 0, 0, 16]); // priority
        payload.extend(block(b"a%2Fb"));
        payload.extend_from_slice(&[0, 0, 0]);
        let mut r = AuthorityRewriter::default();
        r.feed(PREFACE);
        let got = r.feed(&frame(HEADERS, END_HEADERS | PADDED | PRIORITY, &payload));
        let mut want_payload = vec![0, 0, 0, 0, 16];
        want_payload.extend(block(b"l"));
        assert_eq!(got, frame(HEADERS, END_HEADERS | PRIORITY, &want_payload));
        // A header block without :authority passes unchanged.
        let plain = frame(HEADERS, END_HEADERS, &[0x83, 0x84]);
        assert_eq!(r.feed(&plain), plain);
    }

    /// What grpc-python 1.85 sends: literal names, incremental indexing.
    #[test]
    fn literal_authority_name_as_grpc_core_writes_it() {
        let mut b = vec![0x40, 5];
        b.extend_from_slice(b":path");
        b.extend_from_slice(&[2, b'/', b'a', 0x40, 10]);
        b.extend_from_slice(b":authority");
        let mut want = b.clone();
        b.push(12);
        b.extend_from_slice(b"tmp%2Fx.sock");
        want.extend_from_slice(&[1, b'l']);
        assert_eq!(rewrite_block(&b), Some(want));
    }

    #[test]
    fn not_http2_passes_through() {
        let mut r = AuthorityRewriter::default();
        assert_eq!(r.feed(b"GET / HTTP/1.1\r\n"), b"GET / HTTP/1.1\r\n");
    }
}
