// mimalloc for the CLI: a no-op build over 10,000 sources makes and drops a few hundred
// thousand small allocations, and glibc's malloc (with the page faults of memory it hands
// back) was a third of its time. The `effectc-nn` worker keeps the system allocator that
// libtorch expects.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(effectc::cli::main());
}
