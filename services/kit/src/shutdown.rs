//! Shutdown on SIGTERM or SIGINT: one [`CancellationToken`] that every
//! server of the process watches, so `mesh up` stops all of them together.

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Cancels `token` on the first SIGTERM or SIGINT.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(stream) => stream,
            Err(error) => {
                warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the process");
                let _ = tokio::signal::ctrl_c().await;
                token.cancel();
                return;
            }
        };
        tokio::select! {
            _ = terminate.recv() => info!(signal = "SIGTERM", "shutting down"),
            _ = tokio::signal::ctrl_c() => info!(signal = "SIGINT", "shutting down"),
            () = token.cancelled() => return,
        }
        token.cancel();
    });
}
