//! `tessera cancel ID`: cancel one of your requests (root: anyone's). A queued request leaves
//! the queue; a leased one is told to stop: its `tessera run` sends SIGTERM to the command
//! (SIGKILL 10 s later) and the slice is freed once the command has stopped.

use std::process::ExitCode;

use tessera_api::wire::RequestState;

use super::daemon_client::{block_on, client_error, SocketArg};
use super::ps::ps_table;
use crate::output::{emit, CliError, Ctx, Format};

/// Arguments of `tessera cancel`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub socket: SocketArg,
    /// The request ID (`tessera ps` lists them).
    pub id: u64,
}

/// Run the command.
pub fn run(args: &Args, ctx: &Ctx) -> Result<ExitCode, CliError> {
    let client = args.socket.client();
    let v = block_on(client.cancel(args.id))?.map_err(client_error)?;
    emit(ctx.output, &v, || {
        let line = match v.state {
            RequestState::Leased => format!(
                "request {}: lease cancelled; its command is being stopped\n",
                v.id
            ),
            _ => format!("request {} cancelled\n", v.id),
        };
        format!(
            "{line}{}",
            ps_table(std::slice::from_ref(&v), ctx.output == Format::Wide)
        )
    })?;
    Ok(ExitCode::SUCCESS)
}
