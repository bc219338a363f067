//! JSS: a per-node workload identity signer for Kubernetes.
//!
//! Request flow, top down: `server` → `attest` → `kubelet` → `cache` →
//! `claims` → `signer`. The cache is asked before any claims are built: a
//! token for the same pod UID, container and audience with at least half its
//! lifetime left is handed out again as is. `token` encodes the JWS, `chain`
//! holds the node certificate chain and `state` owns the node's files; every
//! refusal goes through `server`'s one contract (codes, statuses, audit).
//! `workload` is the pod side: token files for agents and TSI's secret
//! sidecar (`jss token --out`, `jss secrets`). `csi` is the CSI node plugin
//! (`jss csi`), a separate process that carries the socket into pods.

pub mod attest;
pub mod cache;
pub mod chain;
pub mod claims;
pub mod client;
pub mod config;
pub mod csi;
pub mod inspect;
pub mod kubelet;
pub mod logging;
pub mod server;
pub mod signer;
pub mod spiffe;
pub mod state;
pub mod token;
pub mod workload;
