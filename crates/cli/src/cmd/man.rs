//! `tessera man [--dir DIR]`: the manual page (roff, section 1) made from the CLI definition
//! (clap_mangen): `tessera.1` on stdout, or with `--dir` one page per command
//! (`tessera.1`, `tessera-serve.1`, `tessera-run.1`, ...) written into DIR.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;

use crate::output::{CliError, Ctx};

/// Arguments of `tessera man`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write `tessera.1` and a page per subcommand into this directory instead.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

fn render(cmd: clap::Command) -> Result<Vec<u8>, CliError> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut out)
        .map_err(|e| CliError::Other(format!("cannot render the manual page: {e}")))?;
    Ok(out)
}

fn write_pages(
    cmd: &clap::Command,
    prefix: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), CliError> {
    let name = if prefix.is_empty() {
        cmd.get_name().to_string()
    } else {
        format!("{prefix}-{}", cmd.get_name())
    };
    let page = cmd.clone().display_name(name.clone());
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, render(page)?).map_err(|source| CliError::Io {
        path: path.clone(),
        source,
    })?;
    written.push(path);
    // clap's own `help` subcommand gets no page (each page lists its subcommands).
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        write_pages(sub, &name, dir, written)?;
    }
    Ok(())
}

/// Run the command.
pub fn run(args: &Args, _ctx: &Ctx) -> Result<ExitCode, CliError> {
    let mut cmd = crate::Cli::command();
    cmd.build();
    match &args.dir {
        None => {
            use std::io::Write;
            std::io::stdout()
                .write_all(&render(cmd)?)
                .map_err(|e| CliError::Other(format!("cannot write the manual page: {e}")))?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|source| CliError::Io {
                path: dir.clone(),
                source,
            })?;
            let mut written = Vec::new();
            write_pages(&cmd, "", dir, &mut written)?;
            for p in written {
                println!("{}", p.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
