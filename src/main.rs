//! allspark: Docker volume plugin, companion agent and operator CLI (entry point).

fn main() {
    std::process::exit(allspark::cli::main());
}
