//! The `spillway` binary: parses the command line and hands over to [`spillway::cli`].

/// jemalloc instead of the system allocator: rows are many small, short-lived allocations made on
/// one thread and freed on another, where glibc's malloc spent about 40% of Spillway's CPU
/// (profiled under the alerts benchmark). In the same benchmark jemalloc cut CPU per alert from
/// 11.4 to 8.5 us and peak RSS from 106-120 to 99 MB (mimalloc: 9.1 us, 174 MB).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// One arena: rows are made on one thread and freed on another, and with an arena per thread
/// (jemalloc's default is four per core) each kept its own freed pages. Trades benchmark, 50,000
/// trades: peak RSS 135-153 MB with the default, 115-117 MB with one arena, at the same rate.
/// `_RJEM_MALLOC_CONF` in the environment still overrides it.
#[used]
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &[u8; 10] = b"narenas:1\0";

fn main() -> std::process::ExitCode {
    spillway::cli::main()
}
