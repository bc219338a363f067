//! JSS: a per-node workload identity signer for Kubernetes.
//!
//! Request flow, top down: `server` → `attest` → `kubelet` → `claims` →
//! `cache` → `signer`, with `token` encoding the JWS, `chain` holding the
//! node certificate chain and `state` owning the node's files.

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
