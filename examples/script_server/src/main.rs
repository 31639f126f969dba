//! Serves the script API until Ctrl-C or `SIGTERM`, then drains and exits.

use std::future::Future;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mlua_isle::{DEFAULT_POOL_QUEUE_PER_MEMBER, SANDBOX_MEMORY_LIMIT, SANDBOX_TIMEOUT};
use script_server::Config;
use tokio::net::TcpListener;

/// A web service that runs users' Lua scripts on a sandboxed pool of isles.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Scripts running at once [default: the available cores].
    #[arg(long)]
    members: Option<usize>,
    /// The deadline of each script, in milliseconds, counted from its arrival.
    #[arg(long, default_value_t = SANDBOX_TIMEOUT.as_millis() as u64)]
    timeout_ms: u64,
    /// The memory each script may use, in MiB.
    #[arg(long, default_value_t = SANDBOX_MEMORY_LIMIT >> 20)]
    memory_mib: usize,
    /// Scripts that may wait for a free member [default: 256 per member].
    #[arg(long)]
    queue: Option<usize>,
}

impl Args {
    fn config(&self) -> Config {
        let members = self.members.unwrap_or(Config::default().members);
        Config {
            members,
            timeout: Duration::from_millis(self.timeout_ms),
            memory_limit: self.memory_mib.saturating_mul(1 << 20),
            queue_capacity: self
                .queue
                .unwrap_or(DEFAULT_POOL_QUEUE_PER_MEMBER * members),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match serve(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("script_server: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(args.addr).await?;
    let shutdown = shutdown_signal()?;
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "listening on {}", listener.local_addr()?)?;
    stdout.flush()?;
    drop(stdout);
    script_server::run(listener, args.config(), shutdown).await?;
    Ok(())
}

/// Completes on Ctrl-C (`SIGINT`) or `SIGTERM`. The handlers are installed at once, so that
/// a signal sent as soon as the address is printed is not missed.
#[cfg(unix)]
fn shutdown_signal() -> io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};

    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> io::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn flags_are_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn flags_make_the_config() {
        let args = Args::parse_from([
            "script_server",
            "--members",
            "3",
            "--timeout-ms",
            "250",
            "--memory-mib",
            "8",
        ]);
        let config = args.config();
        assert_eq!(config.members, 3);
        assert_eq!(config.timeout, Duration::from_millis(250));
        assert_eq!(config.memory_limit, 8 << 20);
        assert_eq!(config.queue_capacity, 3 * DEFAULT_POOL_QUEUE_PER_MEMBER);
        assert_eq!(args.addr, "127.0.0.1:8080".parse().unwrap());
    }
}
