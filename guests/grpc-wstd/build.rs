//! Generates the `shop` package's message types from examples/grpc/orders.proto.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = "../../examples/grpc";
    let proto = format!("{dir}/orders.proto");
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([&proto], [dir])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
