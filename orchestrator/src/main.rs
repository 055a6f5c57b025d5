mod cli;

// The API server spends much of its time building and dropping JSON trees; glibc's allocator took
// about 40% of its CPU under a pod-creation burst (consolidating and unlinking freed chunks).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Hidden helper subcommands create and join namespaces; they must run
    // before any thread (and so before the async runtime) exists.
    if let Some(code) = cairn_orchestrator::runtime::helper_main() {
        std::process::exit(code);
    }
    cli::main()
}
