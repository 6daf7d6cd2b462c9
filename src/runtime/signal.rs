//! The process's stop signal.

/// SIGTERM or SIGINT; and, when `MESHREV_EXIT_ON_STDIN_EOF` is set (test harnesses that
/// must leave no process behind, even when they are killed), the end of standard input.
pub(super) async fn shutdown() {
    if std::env::var_os("MESHREV_EXIT_ON_STDIN_EOF").is_some() {
        let eof = tokio::task::spawn_blocking(|| {
            let mut sink = [0u8; 256];
            let mut stdin = std::io::stdin();
            while matches!(std::io::Read::read(&mut stdin, &mut sink), Ok(n) if n > 0) {}
        });
        tokio::select! {
            _ = eof => tracing::info!("standard input closed"),
            () = os_signal() => {}
        }
        return;
    }
    os_signal().await;
}

async fn os_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            },
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
