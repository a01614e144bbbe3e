fn main() {
    std::process::exit(effectc::cli::main());
}
