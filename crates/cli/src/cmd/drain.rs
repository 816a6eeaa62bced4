//! `tessera drain --gpu N`: no new leases on GPU N; once its last lease ends its idle MIG
//! instances are destroyed (ready for maintenance or a mode change). `--undo` puts it back in
//! service, where the scheduler re-partitions it on demand. Root only.

use std::process::ExitCode;

use super::daemon_client::{block_on, client_error, SocketArg};
use super::status::gpu_text;
use crate::output::{emit, CliError, Ctx};

/// Arguments of `tessera drain`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub socket: SocketArg,
    /// The GPU index.
    #[arg(long)]
    pub gpu: u32,
    /// Put the GPU back in service.
    #[arg(long)]
    pub undo: bool,
}

/// Run the command.
pub fn run(args: &Args, ctx: &Ctx) -> Result<ExitCode, CliError> {
    let client = args.socket.client();
    let g = block_on(client.drain(args.gpu, !args.undo))?.map_err(client_error)?;
    emit(ctx.output, &g, || {
        let what = if args.undo {
            "back in service".to_string()
        } else if g.busy > 0 {
            format!(
                "drained: no new leases; it will be emptied when its {} lease(s) end",
                g.busy
            )
        } else {
            "drained and empty".to_string()
        };
        format!("GPU {}: {what}\n{}", g.index, gpu_text(&ctx.catalog, &g))
    })?;
    Ok(ExitCode::SUCCESS)
}
