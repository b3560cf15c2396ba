//! The process's signals as [`Control`]s: SIGTERM and SIGINT ask for a stop (a second one
//! for an immediate exit), SIGHUP for a reload. The binary's side of "shutdown is an input".

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use super::Control;

/// Installs the handlers and forwards each signal as a [`Control`]. Must be called inside the
/// runtime; the handlers stay installed for the life of the process, so a signal that
/// arrives while the daemon starts is not lost.
pub fn forward() -> std::io::Result<mpsc::UnboundedReceiver<Control>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (control, name) = tokio::select! {
                Some(()) = term.recv() => (Control::Stop, "SIGTERM"),
                Some(()) = int.recv() => (Control::Stop, "SIGINT"),
                Some(()) = hup.recv() => (Control::Reload, "SIGHUP"),
                else => return,
            };
            tracing::debug!(signal = name, "signal received");
            if tx.send(control).is_err() {
                return; // the daemon has ended
            }
        }
    });
    Ok(rx)
}
