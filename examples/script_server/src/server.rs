//! Serving until told to stop, then draining.

use std::fmt;
use std::future::Future;
use std::io;

use mlua_isle::IsleError;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::routes;
use crate::scripts::Scripts;

/// Why the service stopped with an error.
///
/// # Examples
///
/// ```
/// let err = script_server::ServerError::Pool(mlua_isle::IsleError::Abandoned);
/// assert!(err.to_string().starts_with("script pool failed"));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum ServerError {
    /// The pool could not start, or a member had to be given up on when it shut down.
    Pool(IsleError),
    /// Serving connections failed.
    Io(io::Error),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Pool(err) => write!(f, "script pool failed: {err}"),
            ServerError::Io(err) => write!(f, "serving failed: {err}"),
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServerError::Pool(err) => Some(err),
            ServerError::Io(err) => Some(err),
        }
    }
}

/// Starts the pool, serves the API on `listener` until `shutdown` completes, then drains:
/// new connections are refused and new scripts turned away (`503`), scripts already
/// accepted run to the end and their clients get their answers; then the pool shuts down.
///
/// # Errors
///
/// [`ServerError::Pool`] if the pool cannot start (a member count or queue capacity of 0,
/// say) or a member had to be given up on while shutting down; [`ServerError::Io`] if serving
/// fails.
///
/// # Cancel safety
///
/// Dropping the future stops accepting connections but is no shutdown: connections already
/// open go on being served and the pool is not shut down. Complete `shutdown` instead.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let config = script_server::Config { members: 1, ..Default::default() };
/// // Stops at once here; a real server awaits Ctrl-C.
/// script_server::run(listener, config, async {}).await?;
/// # Ok(())
/// # }
/// ```
pub async fn run<F>(listener: TcpListener, config: Config, shutdown: F) -> Result<(), ServerError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let (pool, driver) = config
        .pool()
        .spawn_async(|_| Ok(()))
        .await
        .map_err(ServerError::Pool)?;
    let scripts = Scripts::new(pool, config.timeout);
    let closing = scripts.clone();
    let served = axum::serve(listener, routes::router(scripts))
        .with_graceful_shutdown(async move {
            shutdown.await;
            closing.close();
        })
        .await;
    // Every connection is closed by now, so no script is waiting for an answer.
    let stopped = driver.shutdown().await;
    served.map_err(ServerError::Io)?;
    stopped.map_err(ServerError::Pool)
}
