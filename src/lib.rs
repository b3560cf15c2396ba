//! hubee-sync: receives télédossiers from HubEE into a Maildir-style spool, exactly once.
//!
//! Rooms (see README "Design"):
//! - [`config`]: TOML as written → validated [`config::Settings`]; every error collected.
//! - [`hubee`]: the hub as a typed client (token cache, retries, streaming bodies).
//! - [`deliver`]: where a télédossier goes (spool with Maildir rules, safe names).
//! - [`state`]: the state database (what was delivered, acknowledgement progress, failures).
//! - [`sync`]: one subscription's cycle: poll, decide, act; the receipt status walk.
//! - [`email`]: digests of what arrived and alerts when a subscription stops working.
//! - [`outbox`]: replies from the legacy software (`outbox/new/`), applied on the hub exactly
//!   once, then moved to `sent/` or `failed/`.
//! - [`cluster`]: several nodes on one PostgreSQL: leases per subscription, the fence.
//! - [`metrics`]: Prometheus metrics and `/healthz` (`[metrics] listen`); a neutral room
//!   the others call one function of when something worth counting happens.
//! - [`daemon`]: `run`: every subscription on its schedule (Europe/Paris), bounded
//!   concurrency, signals, drain.

pub mod app;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod crashpoint;
pub mod daemon;
pub mod deliver;
pub mod email;
pub mod events;
pub mod exit;
pub mod hubee;
pub mod metrics;
pub mod outbox;
pub mod shutdown;
pub mod state;
pub mod sync;
pub mod systemd;
