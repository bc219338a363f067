//! JSS: a per-node workload identity signer for Kubernetes.
//!
//! Request flow, top down: `server` → `attest` → `kubelet` → `claims` →
//! `cache` → `signer`, with `token` encoding the JWS, `chain` holding the
//! node certificate chain and `state` owning the node's files. `workload` is the pod side: token
//! files for agents and TSI's secret sidecar (`jss token --out`, `jss secrets`).

pub mod attest;
pub mod cache;
pub mod chain;
pub mod claims;
pub mod client;
pub mod config;
pub mod inspect;
pub mod kubelet;
pub mod server;
pub mod signer;
pub mod state;
pub mod token;
pub mod workload;
