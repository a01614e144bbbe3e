//! Bakes an rpath to libtorch's `lib` folder into every binary this crate links
//! (the CLI and the test executables), so `effectc` runs without LD_LIBRARY_PATH.
//! torch-sys publishes the folder it linked against as DEP_TCH_LIBTORCH_LIB.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    // The CLI never calls libtorch (training and the teachers run in `effectc-nn`), but
    // the linker keeps the C++ wrapper's template code alive because it is exported from
    // the executable, and that keeps libtorch's ~200 ms load in every `effectc` run. Not
    // exporting symbols of static archives lets --gc-sections and --as-needed drop it.
    println!("cargo:rustc-link-arg-bin=effectc=-Wl,--exclude-libs,ALL");
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
