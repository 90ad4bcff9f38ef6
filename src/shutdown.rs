//! Stop signals. The first SIGTERM or SIGINT starts a graceful shutdown (the server
//! drains, see `server`); a second one, while that runs, ends the process at once
//! with the conventional code 128 + the signal number.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// The signals that stop the daemon, with their numbers.
const STOP_SIGNALS: [(SignalKind, i32, &str); 2] = [
    (SignalKind::terminate(), 15, "SIGTERM"),
    (SignalKind::interrupt(), 2, "SIGINT"),
];

/// Installs the handlers now, so a signal that arrives the moment the daemon reports
/// SERVING already drains it instead of killing it. The future resolves at the first
/// stop signal, and from then on exits the process at the next one. If the handlers
/// cannot be installed it never resolves (the daemon can still be killed). Call it
/// inside the runtime.
pub fn stop_signal() -> impl Future<Output = ()> + Send + 'static {
    let handlers = signal(STOP_SIGNALS[0].0)
        .and_then(|terminate| signal(STOP_SIGNALS[1].0).map(|interrupt| (terminate, interrupt)));
    async move {
        match handlers {
            Ok((terminate, interrupt)) => stopped_by(terminate, interrupt).await,
            Err(_) => std::future::pending().await,
        }
    }
}

async fn stopped_by(mut terminate: Signal, mut interrupt: Signal) {
    let name = tokio::select! {
        _ = terminate.recv() => STOP_SIGNALS[0].2,
        _ = interrupt.recv() => STOP_SIGNALS[1].2,
    };
    tracing::info!(
        signal = name,
        "stop signal received; shutting down gracefully (send it again to exit at once)"
    );
    tokio::spawn(async move {
        let number = tokio::select! {
            _ = terminate.recv() => STOP_SIGNALS[0].1,
            _ = interrupt.recv() => STOP_SIGNALS[1].1,
        };
        tracing::warn!("second stop signal: exiting without finishing in-flight calls");
        std::process::exit(128 + number);
    });
}
