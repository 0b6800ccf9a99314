//! The `spillway` binary: parses the command line and hands over to [`spillway::cli`].

/// jemalloc instead of the system allocator: rows are many small, short-lived allocations made on
/// one thread and freed on another, where glibc's malloc spent about 40% of Spillway's CPU
/// (profiled under the alerts benchmark). In the same benchmark jemalloc cut CPU per alert from
/// 11.4 to 8.5 us and peak RSS from 106-120 to 99 MB (mimalloc: 9.1 us, 174 MB).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    spillway::cli::main()
}
