//! Bakes an rpath to libtorch's `lib` folder into every binary this crate links
//! (the CLI and the test executables), so `effectc` runs without LD_LIBRARY_PATH.
//! torch-sys publishes the folder it linked against as DEP_TCH_LIBTORCH_LIB.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    }
}
