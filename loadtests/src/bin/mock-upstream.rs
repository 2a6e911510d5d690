//! `mock-upstream`: serve the mock provider upstream until Ctrl-C or SIGTERM.
//! See `mock-upstream --help` and loadtests/README.md.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::ExitCode;

use switchyard_loadtests::cli::{self, Command};
use switchyard_loadtests::MockUpstream;

#[actix_web::main]
async fn main() -> ExitCode {
    let options = match cli::parse_args(std::env::args_os().skip(1)) {
        Ok(Command::Help) => {
            print!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Command::Run(options)) => options,
        Err(e) => {
            eprintln!("mock-upstream: {e}\nRun 'mock-upstream --help' for usage.");
            return ExitCode::from(2);
        }
    };
    let listen = options.config.listen;
    let mock = match MockUpstream::start(options.config).await {
        Ok(mock) => mock,
        Err(e) => {
            eprintln!("mock-upstream: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut names = Vec::with_capacity(options.routes.len());
    for (name, behavior) in options.routes {
        mock.set_behavior(&name, behavior);
        names.push(name);
    }
    // The one line printed; scripts read the URL from it. Nothing is printed per request.
    if names.is_empty() {
        println!("mock-upstream listening on {}", mock.url());
    } else {
        println!(
            "mock-upstream listening on {} (routes: {})",
            mock.url(),
            names.join(", ")
        );
    }
    shutdown_signal().await;
    mock.stop().await;
    ExitCode::SUCCESS
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use actix_web::rt::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = actix_web::rt::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = actix_web::rt::signal::ctrl_c().await;
}
