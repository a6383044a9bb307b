//! The committed C header (`include/pvkit_abi.h`) must be what cbindgen generates from the
//! Rust definitions today: a change to the ABI that forgets the header fails here.

use std::path::Path;

const REGENERATE: &str = "PVKIT_REGENERATE_HEADER=1 cargo test -p pvkit-abi --test c_header";

#[test]
fn c_header_matches_the_rust_definitions() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen parses pvkit-abi");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let path = dir.join("include").join("pvkit_abi.h");
    if std::env::var_os("PVKIT_REGENERATE_HEADER").is_some() {
        std::fs::write(&path, &generated).expect("write the header");
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date with the Rust definitions of pvkit-abi; run `{REGENERATE}` to \
         regenerate it, and commit the result",
        path.display()
    );
}
