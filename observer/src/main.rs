//! The `observer` binary: parses the command line and dispatches. Errors end here as one line
//! on stderr and a non-zero exit: 64 for a bad flag, 1 for anything else.

use std::process::ExitCode;

use clap::Parser as _;
use observer::{
    agent, check, cli,
    config::{Cli, Command},
    sys, telemetry,
};

/// `EX_USAGE`: an invalid flag or configuration value.
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let valid = match &cli.command {
        Command::Agent(a) => a.validate(),
        Command::Check(p) => p.validate(),
        Command::Events(_) | Command::Sockets(_) | Command::Status(_) => Ok(()),
    };
    if let Err(e) = valid {
        eprintln!("observer: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    if let Err(e) = telemetry::init() {
        eprintln!("observer: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("observer: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Agent(args) => {
            sys::single_malloc_arena();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(agent::run(*args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Events(args) => cli::events(&args).map(|()| ExitCode::SUCCESS),
        Command::Sockets(args) => cli::sockets(&args).map(|()| ExitCode::SUCCESS),
        Command::Status(args) => cli::status(&args).map(|()| ExitCode::SUCCESS),
        Command::Check(args) => {
            let (report, code) = check::run(&args)?;
            #[expect(clippy::print_stdout, reason = "the report is the command's output")]
            {
                print!("{report}");
            }
            Ok(code)
        }
    }
}
