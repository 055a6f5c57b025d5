mod cli;

fn main() -> std::process::ExitCode {
    // Hidden helper subcommands create and join namespaces; they must run
    // before any thread (and so before the async runtime) exists.
    if let Some(code) = cairn_orchestrator::runtime::helper_main() {
        std::process::exit(code);
    }
    cli::main()
}
