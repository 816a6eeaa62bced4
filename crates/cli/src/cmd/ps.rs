//! `tessera ps`: your requests and leases (root: everyone's): id, user, slice, state, time
//! waited and time running.

use std::process::ExitCode;

use tessera_api::wire::{format_ms, RequestState, RequestView};

use super::daemon_client::{block_on, client_error, SocketArg};
use crate::output::{emit, table, CliError, Ctx, Format};

/// Arguments of `tessera ps`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Also list the 100 most recently ended requests.
    #[arg(short, long)]
    pub all: bool,
}

/// What a request holds or wants, in a few words.
pub fn slice_text(v: &RequestView) -> String {
    match &v.slice {
        Some(s) => s.to_string(),
        None => {
            let mut t = format!("({})", v.ask);
            if let Some(m) = &v.gpu_model {
                t.push_str(&format!(" on {m}"));
            }
            t
        }
    }
}

/// The state, with the queue place while queued.
pub fn state_text(v: &RequestView) -> String {
    match (v.state, v.position, v.queue_length) {
        (RequestState::Queued, Some(p), Some(n)) => format!("queued {p}/{n}"),
        (RequestState::Leased, _, _) if v.cancel_requested => "leased (cancelling)".into(),
        (RequestState::Done, _, _) => match &v.end_reason {
            Some(r) => format!("done ({r})"),
            None => "done".into(),
        },
        // A request the client gave up on before it got a slice (`tessera run` was stopped or
        // timed out) is stored as cancelled; say what the client said.
        (RequestState::Cancelled, _, _) => match &v.end_reason {
            Some(r) if r.starts_with("withdrawn") => "withdrawn".into(),
            Some(r) if r.starts_with("cancelled") => r.clone(),
            Some(r) => format!("cancelled ({r})"),
            None => "cancelled".into(),
        },
        (RequestState::Expired, _, _) => match &v.end_reason {
            Some(r) => format!("expired ({r})"),
            None => "expired".into(),
        },
        (s, _, _) => s.to_string(),
    }
}

/// The `ps` table; `wide` adds the priority and the exit code and shows the whole command.
pub fn ps_table(rows: &[RequestView], wide: bool) -> String {
    if rows.is_empty() {
        return "no requests\n".into();
    }
    let mut header = vec!["ID", "USER", "SLICE", "STATE", "WAITED", "RUNNING"];
    if wide {
        header.extend(["PRIO", "EXIT"]);
    }
    header.push("COMMAND");
    let mut t = table(&header);
    for v in rows {
        let mut cmd = v.command.join(" ");
        if !wide && cmd.chars().count() > 40 {
            cmd = cmd.chars().take(39).collect::<String>() + "…";
        }
        let mut row = vec![
            v.id.to_string(),
            v.user.clone(),
            slice_text(v),
            state_text(v),
            format_ms(v.waited_ms),
            if v.running_ms > 0 || v.state == RequestState::Leased {
                format_ms(v.running_ms)
            } else {
                "-".into()
            },
        ];
        if wide {
            row.push(v.priority.to_string());
            row.push(v.exit_code.map_or_else(|| "-".into(), |c| c.to_string()));
        }
        row.push(cmd);
        t.add_row(row);
    }
    let mut out = format!("{t}\n");
    // Why each queued request waits (the scheduler's last pass), below the table.
    for v in rows.iter().filter(|v| v.state == RequestState::Queued) {
        if let Some(why) = &v.wait_reason {
            out.push_str(&format!("request {} waits: {why}\n", v.id));
        }
    }
    out
}

/// Run the command.
pub fn run(args: &Args, ctx: &Ctx) -> Result<ExitCode, CliError> {
    let client = args.socket.client();
    let rows = block_on(client.list(args.all))?.map_err(client_error)?;
    emit(ctx.output, &rows, || {
        ps_table(&rows, ctx.output == Format::Wide)
    })?;
    Ok(ExitCode::SUCCESS)
}
