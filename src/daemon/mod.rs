//! The daemon (`hubee-sync run`).

pub mod schedule;
