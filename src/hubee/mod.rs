//! The hub as a typed client: OAuth2 token cache, identifying headers, retries with backoff,
//! streaming downloads. Knows nothing of spools, state or subscriptions' schedules.

pub mod client;
pub mod error;
pub mod model;
pub mod status;

pub use client::{Download, Fence, HubClient, HubConfig, HubSession, RetryPolicy};
pub use error::HubError;
