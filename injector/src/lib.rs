//! `jss-injector`: a mutating admission webhook that adds `jss secrets` to
//! pods annotated the way Trusted Service Identity's were (README.md, "The
//! injector").
//!
//! A review reads top down: [`server`] (HTTPS, routes, body cap) →
//! [`review`] (decode) → [`mutate`] (decide) → [`annotations`] (what the pod
//! asks) → [`patch`] (the JSON Patch).

pub mod annotations;
pub mod config;
pub mod metrics;
pub mod mutate;
pub mod patch;
pub mod review;
pub mod server;
pub mod tls;
