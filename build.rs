//! Test binaries embed CPython (docs/testing.md property tests): point their rpath at the libpython
//! of the interpreter PyO3 was configured for, so they never pick up another one on the
//! system library path. The extension module itself links no libpython rpath.
fn main() {
    if let Some(dir) = pyo3_build_config::get().lib_dir() {
        println!("cargo:rustc-link-arg-tests=-Wl,-rpath,{dir}");
        println!("cargo:rustc-link-arg-benches=-Wl,-rpath,{dir}");
    }
}
