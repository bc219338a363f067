//! Test harness for JSS: real parts, started per test and torn down on drop
//! (also when the test panics). Nothing here is part of the product.
//!
//! Every fixture fails loudly when its tool is missing: `swtpm-ci/install-deps`
//! installs them, and a test that silently skipped would prove nothing.

pub mod bao;
pub mod ca;
pub mod cluster;
pub mod csi;
pub mod daemon;
pub mod discovery;
pub mod freeze_proxy;
pub mod injector;
pub mod kube;
pub mod kubelet;
pub mod net;
pub mod node;
pub mod pods;
pub mod pss;
pub mod spiffe;
pub mod swtpm;
pub mod tpm_proxy;
pub mod watch;
