use clap::Parser;

/// Large tensors come and go every layer. glibc hands blocks above 32 MiB straight back
/// to the kernel and maps fresh zeroed pages for the next one; a profile of a training step
/// showed a quarter of the time in page clearing and TLB shootdowns. Keeping freed memory in
/// the heap lets the next tensor reuse it.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

fn main() {
    keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MSA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = msa::cli::Cli::parse();
    if let Err(e) = msa::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
