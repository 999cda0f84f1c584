//! `include/licensing.h` is what cbindgen makes of `src/` with `cbindgen.toml`: this test fails
//! when the checked-in header is stale. `UPDATE_FFI_HEADER=1 cargo test -p licensing-ffi --test
//! header` rewrites it.

#[test]
fn the_checked_in_header_is_what_cbindgen_generates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml parses");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("UTF-8");
    let path = dir.join("include/licensing.h");
    if std::env::var_os("UPDATE_FFI_HEADER").is_some() {
        std::fs::write(&path, &generated).expect("write the header");
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} is stale: run `UPDATE_FFI_HEADER=1 cargo test -p licensing-ffi --test header` and commit it",
        path.display()
    );
}
