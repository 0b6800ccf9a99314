//! The `spillway` binary: parses the command line and hands over to [`spillway::cli`].

fn main() -> std::process::ExitCode {
    spillway::cli::main()
}
