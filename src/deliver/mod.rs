//! Where a télédossier goes when `delivery = "spool"`: a Maildir-style spool (CONTRACT "Spool
//! layout"). [`names`] makes entry and attachment names safe (pure); [`spool`] writes entries
//! privately in `tmp/`, seals them (fsync, SHA256SUMS) and publishes them into `new/` with one
//! atomic rename that never replaces anything.

pub mod database;
pub mod names;
pub mod spool;

pub use spool::{
    EntryLocation, FileWriter, Manifest, ManifestAttachment, PendingEntry, PublishOutcome, Spool,
    SpoolError, WrittenFile,
};
