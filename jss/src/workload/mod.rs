//! The workload side: what runs inside a pod and turns the node's attested
//! token into something an application or an agent already consumes.
//!
//! - [`token_file`]: `jss token --out FILE [--refresh]`, a token file kept
//!   fresh for Vault Agent / OpenBao Agent `auto_auth` method `jwt`.
//! - [`secrets`]: `jss secrets`, TSI's secret sidecar (files from the
//!   `tsi.secrets` annotation) and `jss secrets exec` (environment references).
//!
//! None of this runs in the daemon; it talks to it over the socket
//! ([`crate::client`]) like any other workload.

pub mod backoff;
pub mod cli;
pub mod secret;
pub mod secrets;
pub mod shutdown;
pub mod token_file;

/// Seconds since the Unix epoch (token `exp` is in these).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
