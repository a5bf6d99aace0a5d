//! Graceful shutdown, threaded explicitly through every long-lived task.
//!
//! One [`ShutdownTrigger`] per process; every server loop, background refresher and
//! connection holds a [`Shutdown`] and stops taking new work once it fires. In-flight
//! requests and pending deliveries are tracked separately (see `adapters::deliver`) so they
//! can finish within a deadline.

use tokio::sync::watch;

/// Fires the shutdown for every [`Shutdown`] made from it.
#[derive(Debug, Clone)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// A task's view of the process shutdown.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new, not yet fired, shutdown pair.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    /// Tells every task to stop taking new work.
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }

    /// Another receiver.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// Whether shutdown has started.
    pub fn is_fired(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves when shutdown starts (at once if it already has).
    pub async fn fired(&mut self) {
        let _ = self.0.wait_for(|fired| *fired).await;
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C: shutting down"),
        _ = term => tracing::info!("SIGTERM: shutting down"),
    }
}
