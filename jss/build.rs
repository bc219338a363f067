//! Generates the SPIFFE Workload API server from `proto/workload.proto`
//! and the CSI Identity and Node services (server, and the client the
//! integration tests speak as the kubelet) from `proto/csi.proto` (needs
//! `protoc`: Debian's protobuf-compiler, see swtpm-ci/install-deps).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/workload.proto");
    println!("cargo:rerun-if-changed=proto/csi.proto");
    tonic_prost_build::configure()
        .build_client(false)
        .compile_protos(&["proto/workload.proto"], &["proto"])?;
    tonic_prost_build::configure().compile_protos(&["proto/csi.proto"], &["proto"])?;
    Ok(())
}
