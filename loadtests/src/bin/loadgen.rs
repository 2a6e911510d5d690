//! `loadgen`: an open- or closed-loop HTTP load generator for loopback targets.
//! See `loadgen --help` and loadtests/README.md.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::ExitCode;

use switchyard_loadtests::loadgen::{self, Command, Report};

fn main() -> ExitCode {
    let options = match loadgen::parse_args(std::env::args_os().skip(1)) {
        Ok(Command::Help) => {
            print!("{}", loadgen::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Command::Run(options)) => options,
        Err(e) => {
            eprintln!("loadgen: {e}\n\n{}", loadgen::USAGE);
            return ExitCode::from(2);
        }
    };
    let mut report = match loadgen::run(&options.spec) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    report.label = options.label;
    print!("{}", Report::markdown_table(&[&report]));
    if !report.errors.is_empty() {
        println!("\nerrors:");
        for (kind, n) in &report.errors {
            println!("  {kind}: {n}");
        }
    }
    if let Some(path) = &options.json {
        if let Err(e) = std::fs::write(path, report.to_json() + "\n") {
            eprintln!("loadgen: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
