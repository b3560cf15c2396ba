//! Spool sequence numbers (CONTRACT, "Spool layout": `sequence` grows with every entry
//! published in the spool, so a consumer can process entries in the order they arrived).
//!
//! Cases of one subscription are worked side by side (`max_parallel_cases`), so two things
//! are arranged here:
//! - numbers are reserved from the state database a block at a time (one durable write per
//!   block instead of one per entry); what a cycle did not use is given back at its end when
//!   nobody reserved after it, so the numbers stay dense in the usual case (a crash leaves a
//!   gap, never a repeat: the reservation is committed before any number of it is used);
//! - an entry holding number `n` is renamed into `new/` only after every entry holding a
//!   smaller number in this process has been renamed or given up (its [`Ticket`] dropped),
//!   so entries still appear in `new/` in sequence order.

use std::collections::BTreeSet;
use std::sync::Mutex;

use crate::state::{StateDb, StateError};

/// Numbers reserved per trip to the state database.
const BLOCK: i64 = 32;

#[derive(Debug, Default)]
pub struct Sequences {
    /// Held while taking a number (and reserving a block when needed), so numbers are handed
    /// out in increasing order.
    alloc: tokio::sync::Mutex<Block>,
    /// Numbers handed out and not yet published or given up.
    outstanding: Mutex<BTreeSet<i64>>,
    turn: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Block {
    /// Next number to hand out.
    next: i64,
    /// Last number reserved (`next > last`: none left).
    last: i64,
}

impl Sequences {
    /// The next number, as a ticket that gives the turn to publish.
    pub async fn take(
        &self,
        state: &StateDb,
        subscription: &str,
    ) -> Result<Ticket<'_>, StateError> {
        let mut block = self.alloc.lock().await;
        if block.next == 0 || block.next > block.last {
            let last = state.reserve_sequences(subscription, BLOCK).await?;
            block.next = last - BLOCK + 1;
            block.last = last;
        }
        let seq = block.next;
        block.next += 1;
        lock(&self.outstanding).insert(seq);
        Ok(Ticket { seq, owner: self })
    }

    /// Gives back the numbers reserved and not handed out, if no one reserved after us
    /// (end of a cycle). Best effort: a number not given back is only a gap.
    pub async fn give_back(&self, state: &StateDb, subscription: &str) {
        let mut block = self.alloc.lock().await;
        if block.next == 0 || block.next > block.last {
            return;
        }
        match state
            .return_sequences(subscription, block.last, block.next - 1)
            .await
        {
            Ok(()) => {}
            Err(e) => {
                tracing::debug!(subscription, error = %e, "spool sequence numbers not given back (a gap, no harm)");
            }
        }
        *block = Block::default();
    }
}

fn lock(m: &Mutex<BTreeSet<i64>>) -> std::sync::MutexGuard<'_, BTreeSet<i64>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A sequence number handed out; dropping it (published, or given up) lets the next one go.
#[derive(Debug)]
pub struct Ticket<'a> {
    seq: i64,
    owner: &'a Sequences,
}

impl Ticket<'_> {
    pub fn number(&self) -> i64 {
        self.seq
    }

    /// Waits until every smaller number handed out by this process is published or given up.
    pub async fn wait_turn(&self) {
        loop {
            let notified = self.owner.turn.notified();
            tokio::pin!(notified);
            // Registered before looking, so a release between the look and the wait is seen.
            notified.as_mut().enable();
            if lock(&self.owner.outstanding).first() == Some(&self.seq) {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        lock(&self.owner.outstanding).remove(&self.seq);
        self.owner.turn.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_later_number_waits_for_the_earlier_one_to_be_released() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&crate::state::Location::Sqlite(dir.path().join("s.db")))
            .await
            .unwrap();
        let seqs = Sequences::default();
        let a = seqs.take(&db, "s").await.unwrap();
        let b = seqs.take(&db, "s").await.unwrap();
        assert_eq!((a.number(), b.number()), (1, 2));
        // b's turn comes only once a is gone.
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), b.wait_turn());
        assert!(waiting.await.is_err(), "2 went before 1 was published");
        a.wait_turn().await;
        drop(a);
        tokio::time::timeout(std::time::Duration::from_secs(5), b.wait_turn())
            .await
            .expect("2 must go once 1 is released");
    }

    #[tokio::test]
    async fn unused_numbers_are_given_back_so_the_next_cycle_continues_densely() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&crate::state::Location::Sqlite(dir.path().join("s.db")))
            .await
            .unwrap();
        let seqs = Sequences::default();
        drop(seqs.take(&db, "s").await.unwrap());
        drop(seqs.take(&db, "s").await.unwrap());
        seqs.give_back(&db, "s").await;
        let next = Sequences::default();
        assert_eq!(next.take(&db, "s").await.unwrap().number(), 3);
        // Another reservation after ours: ours is not given back (a gap, never a repeat).
        let other = Sequences::default();
        assert_eq!(other.take(&db, "s").await.unwrap().number(), 3 + BLOCK);
        next.give_back(&db, "s").await;
        assert_eq!(db.next_sequence("s").await.unwrap(), 3 + 2 * BLOCK);
    }
}
