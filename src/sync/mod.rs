//! One subscription's cycle: poll the hub, decide what each notification asks, deliver, then
//! acknowledge — in that order and no other (CONTRACT, "The rule of acknowledgement").
//!
//! - [`plan`]: pure decisions (ordering a batch, what a notification asks for).
//! - [`entry`]: building and publishing one spool entry, verified, exactly once.
//! - [`case`]: a télédossier in its round (0, then one per reopening), with its receipt.
//! - [`event`]: an OSL event (message, status change, deposit), acknowledged RECEIVED.
//! - [`park`]: items that keep failing: parked, then quarantined.
//! - [`cycle`]: one cycle: recovery of interrupted publications, the queue, the parked items.
//! - [`queue`]: the queue drained as a pipeline (cases side by side, each case's
//!   notifications in order, listed again as slots free up).
//! - [`item`]: one item's work, its acknowledgement, and what a failure does to it.
//! - [`report`]: what a cycle did.
//! - [`context`]: what every step shares: the subscription's context, the item error,
//!   progress, the activity journal's recorder.
//! - [`publish`]: an entry's rename into `new/`, recorded; recovery of an interrupted one.
//! - [`sequence`]: spool sequence numbers, reserved in blocks, published in their order.
//! - [`transition`]: a case moved to a status with one truthful event, on any kind of hub.

pub mod case;
pub mod context;
pub mod cycle;
pub mod download;
pub mod entry;
pub mod event;
pub mod item;
pub mod park;
pub mod plan;
pub mod publish;
pub mod queue;
pub mod redeliver;
pub mod report;
pub mod sequence;
pub mod transition;

pub use crate::shutdown::Shutdown;
pub use context::{subscription_ctx, ItemError, Progress, SubscriptionCtx};
pub use cycle::run_cycle;
pub use report::CycleReport;
