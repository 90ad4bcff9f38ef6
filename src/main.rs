//! The `seatbroker` binary: parse the command line and hand over to the library.

// The broker allocates small, short-lived buffers on every RPC (HTTP/2 frames, protobuf
// messages, log records) from many threads; mimalloc serves that pattern with less
// contention than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    seatbroker::cli::main()
}
