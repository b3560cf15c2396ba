//! The hub client's configuration, from the validated `[hub]` settings.

use crate::hubee::{HubConfig, RetryPolicy};

use super::Settings;

/// The hub client's configuration for these settings.
pub fn hub_config(settings: &Settings) -> HubConfig {
    let h = &settings.hub;
    HubConfig {
        api_url: h.api_url.clone(),
        token_url: h.token_url.clone(),
        editor_name: h.editor_name_header.clone(),
        application_name: h.application_name.clone(),
        software_version: env!("CARGO_PKG_VERSION").to_string(),
        proxy: h.proxy.clone(),
        ca_file: h.ca_file.clone(),
        timeout: h.timeout,
        retry: RetryPolicy {
            attempts: h.retry_attempts,
            base_delay: h.retry_base_delay,
            max_delay: h.retry_max_delay,
        },
    }
}
