//! The `portal-bot` binary. Deliberately thin: everything is in the library.

fn main() -> std::process::ExitCode {
    portal_bot::cli::main()
}
