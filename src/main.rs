//! The `imgsearch` binary: parse flags, run, map errors to an exit code.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = imgsearch::cli::Args::parse();
    match imgsearch::cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
