//! Links hostile-os with its own linker script (absolute path: works from any cwd).

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg=-T{dir}/linker.ld");
    // A fixed-address ET_EXEC even when `-C relocation-model=static` from
    // .cargo/config.toml is lost (e.g. a parent cargo's CARGO_ENCODED_RUSTFLAGS wins).
    println!("cargo:rustc-link-arg=--no-pie");
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rerun-if-changed=build.rs");
}
