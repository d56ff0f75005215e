//! The `genesis-billing` binary: wiring only; see `cli`.

fn main() -> std::process::ExitCode {
    genesis_billing::cli::main()
}
