//! The stop signal shared by every task of a process (as mini-redis's `shutdown.rs`): a
//! neutral room that the cycle, the cluster, the outbox and the daemon all listen to.

/// A stop signal shared by every cycle of a process.
#[derive(Clone, Debug)]
pub struct Shutdown(
    tokio::sync::watch::Receiver<bool>,
    /// For [`Shutdown::never`]: keeps the channel open so that it never reports a stop.
    #[allow(dead_code)]
    Option<std::sync::Arc<tokio::sync::watch::Sender<bool>>>,
);

impl Shutdown {
    /// A signal and the sender that triggers it.
    pub fn new() -> (tokio::sync::watch::Sender<bool>, Shutdown) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, Shutdown(rx, None))
    }

    /// A signal that never fires (for `once`, `redeliver`, tests).
    pub fn never() -> Shutdown {
        let (tx, rx) = tokio::sync::watch::channel(false);
        Shutdown(rx, Some(std::sync::Arc::new(tx)))
    }

    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// A signal that fires when `a` fires or when `b` becomes true.
    pub fn merge(a: &Shutdown, b: tokio::sync::watch::Receiver<bool>) -> Shutdown {
        let (tx, rx) = tokio::sync::watch::channel(a.is_requested() || *b.borrow());
        let (a, mut b) = (a.clone(), b);
        tokio::spawn(async move {
            tokio::select! {
                _ = a.requested() => {}
                _ = async {
                    while !*b.borrow_and_update() {
                        if b.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                } => {}
            }
            let _ = tx.send(true);
        });
        Shutdown(rx, None)
    }

    /// Resolves when a stop is requested.
    pub async fn requested(&self) {
        let mut rx = self.0.clone();
        loop {
            if *rx.borrow_and_update() {
                return;
            }
            if rx.changed().await.is_err() {
                // Sender gone without a stop: never resolve.
                std::future::pending::<()>().await;
            }
        }
    }
}
