//! `switchyard --config FILE` serves; `switchyard check --config FILE` validates and prints
//! every problem. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use switchyard::config::{Config, LogFormat};

const USAGE: &str = "usage:
  switchyard --config FILE          serve the gateway
  switchyard check --config FILE    validate FILE, print every problem, exit 1 if any";

enum Command {
    Serve(PathBuf),
    Check(PathBuf),
}

fn parse_args() -> Result<Command, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut check = false;
    let mut config = None;
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Value(v) if v == "check" && !check && config.is_none() => check = true,
            Short('c') | Long("config") => {
                config = Some(PathBuf::from(parser.value().map_err(|e| e.to_string())?))
            }
            Short('h') | Long("help") => return Err(String::new()),
            other => return Err(other.unexpected().to_string()),
        }
    }
    let config = config.ok_or("missing --config FILE")?;
    Ok(if check {
        Command::Check(config)
    } else {
        Command::Serve(config)
    })
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal; a file or a log collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let command = match parse_args() {
        Ok(c) => c,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (path, serve) = match command {
        Command::Serve(p) => (p, true),
        Command::Check(p) => (p, false),
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(problems) => {
            eprintln!("{}: {} problem(s):", path.display(), problems.0.len());
            for p in &problems.0 {
                eprintln!("  {}: {}", p.key, p.message);
            }
            return ExitCode::from(1);
        }
    };
    if !serve {
        println!(
            "{}: ok ({} deployments, {} model groups)",
            path.display(),
            config.deployments.len(),
            config.groups.len()
        );
        return ExitCode::SUCCESS;
    }
    init_logging(&config);
    let result = actix_web::rt::System::new().block_on(switchyard::run(config));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
