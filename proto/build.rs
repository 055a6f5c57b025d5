//! Compiles Cairn's .proto files with a vendored protoc, so a fresh machine needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc only through the PROTOC variable.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto");
    // Services Cairn does not serve yet answer Unimplemented through generated default methods.
    tonic_prost_build::configure()
        .generate_default_stubs(true)
        .compile_protos(
            &[
                "proto/kv.proto",
                "proto/auth.proto",
                "proto/rpc.proto",
                "proto/raft.proto",
                "proto/v3lock.proto",
                "proto/v3election.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
