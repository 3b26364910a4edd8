//! Binding and running an HTTP server, shared by `hone serve` and `hone board`: the address from
//! `--host` (loopback unless a secret guards every request), a small tokio runtime, and a
//! graceful stop on Ctrl-C or SIGTERM.

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context, Result};
use axum::Router;

/// The address to bind for `--host` and `--port`. Anything but loopback is refused unless
/// `secured` (a key or token guards every request): `needs` says what would secure it and what
/// the risk is.
pub(crate) fn bind_address(
    host: &str,
    port: u16,
    secured: bool,
    needs: &str,
) -> Result<SocketAddr> {
    let ip: IpAddr = match host {
        "localhost" => IpAddr::from([127, 0, 0, 1]),
        host => host
            .parse()
            .with_context(|| format!("--host {host}: not an IP address"))?,
    };
    if !ip.is_loopback() && !secured {
        bail!("--host {host}: listening beyond this machine needs {needs}");
    }
    Ok(SocketAddr::new(ip, port))
}

/// Serves `router` on `addr` until Ctrl-C (or SIGTERM); `on_listening` is told the bound address
/// first (port 0 picks a free one).
pub(crate) fn run_http(
    addr: SocketAddr,
    router: Router,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the HTTP runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        on_listening(listener.local_addr()?);
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("the HTTP server failed")
    })
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
