//! The binary carries the SDK and WIT (`switchyard new` writes them out): rebuild it when
//! they change, which cargo does not see on its own since they live outside this crate.

fn main() {
    println!("cargo:rerun-if-changed=../sdk/src");
    println!("cargo:rerun-if-changed=../sdk/Cargo.toml");
    println!("cargo:rerun-if-changed=../wit");
}
