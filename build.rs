//! Bakes an rpath to libtorch's `lib` folder into every binary this crate links
//! (the CLI and the test executables), so `effectc` runs without LD_LIBRARY_PATH.
//! torch-sys publishes the folder it linked against as DEP_TCH_LIBTORCH_LIB.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
        // Nothing calls into libtorch_cuda directly, so the linker's --as-needed would drop
        // it and CUDA would be invisible: keep it linked in the binaries that train.
        if std::path::Path::new(&lib_dir)
            .join("libtorch_cuda.so")
            .is_file()
        {
            for flag in ["-Wl,--no-as-needed", "-ltorch_cuda", "-Wl,--as-needed"] {
                println!("cargo:rustc-link-arg-bin=effectc-nn={flag}");
                println!("cargo:rustc-link-arg-benches={flag}");
            }
        }
    }
}
