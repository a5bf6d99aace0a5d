//! The `portal-bot` binary. Deliberately thin: everything is in the library.

/// mimalloc instead of glibc malloc: under load, glibc's arena locks and fragmentation cost
/// measurable CPU and memory (README "Performance" has the figures).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    portal_bot::cli::main()
}
