//! The `imgsearch` binary: parse flags, run, map errors to an exit code.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // RUST_LOG filters; the default logs one line per HTTP request (`serve`).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("imgsearch=info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();
    let args = imgsearch::cli::Args::parse();
    match imgsearch::cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
