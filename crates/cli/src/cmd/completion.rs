//! `tessera completion bash|zsh|fish|elvish|powershell`: the shell completion script, made
//! from the CLI definition (clap_complete), on stdout.
//!
//! Install, e.g.: `tessera completion bash > /usr/share/bash-completion/completions/tessera`,
//! `tessera completion zsh > /usr/share/zsh/vendor-completions/_tessera`,
//! `tessera completion fish > /usr/share/fish/vendor_completions.d/tessera.fish`.

use std::io::Write;
use std::process::ExitCode;

use clap::CommandFactory;

use crate::output::{CliError, Ctx};

/// Arguments of `tessera completion`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Run the command.
pub fn run(args: &Args, _ctx: &Ctx) -> Result<ExitCode, CliError> {
    let mut cmd = crate::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "tessera", &mut out);
    std::io::stdout()
        .write_all(&out)
        .map_err(|e| CliError::Other(format!("cannot write the completion script: {e}")))?;
    Ok(ExitCode::SUCCESS)
}
