//! Generates the SPIFFE Workload API server from `proto/workload.proto`
//! (needs `protoc`: Debian's protobuf-compiler, see swtpm-ci/install-deps).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/workload.proto");
    tonic_prost_build::configure()
        .build_client(false)
        .compile_protos(&["proto/workload.proto"], &["proto"])?;
    Ok(())
}
