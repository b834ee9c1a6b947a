fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure().compile_protos(
        &["fluid/agent/v1/agent.proto", "fluid/v1/fluid.proto"],
        &["."],
    )?;
    Ok(())
}
