//! One subscription's cycle: poll the hub, decide what each notification asks, deliver, then
//! acknowledge — in that order and no other (CONTRACT, "The rule of acknowledgement").
//!
//! - [`plan`]: pure decisions (ordering a batch, what a notification asks for).
//! - [`case`]: a new télédossier: fetch, verify, publish, receipt, DELETE.
//! - [`cycle`]: the batch loop, recovery of interrupted publications, the per-cycle report.

pub mod case;
pub mod cycle;
pub mod download;
pub mod plan;

pub use cycle::{run_cycle, CycleReport, Shutdown, SubscriptionCtx};
