//! Configuration: the TOML file as written → validated [`Settings`], every error collected.
//!
//! Three stages, as in zincati:
//! 1. [`raw`] — what the file says: structs where every field is optional, unknown keys
//!    refused (each one reported, with a suggestion when it looks like a typo).
//! 2. [`inputs`] — the main file and its `include`d files merged over the defaults, the files'
//!    own permissions checked.
//! 3. [`settings`] — validated, strongly typed [`Settings`]. Code after start-up only sees
//!    these.
//!
//! [`load`] runs all three and returns either settings or [`ConfigErrors`] with *every*
//! problem found (file, key, what is wrong, what to do), as `hubee-sync validate` prints them
//! (exit status [`EX_CONFIG`]). No error ever holds a secret.

pub mod cron;
mod duration;
mod error;
mod hub;
pub mod inputs;
pub mod metrics;
pub mod raw;
mod schedule;
mod secret;
pub mod settings;
mod suggest;
mod transliterate;
mod validate;

use std::path::{Path, PathBuf};

pub use duration::parse_duration;
pub use error::{ConfigError, ConfigErrors};
pub use hub::hub_config;
pub use schedule::Schedule;
pub use secret::{Secret, SecretError, SecretSource};
pub use settings::{
    host_name, Delivery, EmailSettings, HubSettings, Settings, StateSettings, StateUrl,
    Subscription,
};
pub use transliterate::to_ascii;

use error::Collector;
use validate::Env;

/// Exit status for a bad configuration (sysexits.h `EX_CONFIG`).
pub const EX_CONFIG: i32 = 78;

/// Where the configuration is when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/hubee-sync/hubee-sync.toml";

/// `$HUBEE_SYNC_CONFIG` when set and not empty, else `/etc/hubee-sync/hubee-sync.toml`.
pub fn default_path() -> PathBuf {
    default_path_from(std::env::var_os("HUBEE_SYNC_CONFIG"))
}

fn default_path_from(env: Option<std::ffi::OsString>) -> PathBuf {
    env.filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_PATH), PathBuf::from)
}

/// Reads, parses, follows `include`, and validates. On failure, every error found.
pub fn load(path: &Path) -> Result<Settings, ConfigErrors> {
    load_with(path, &Env::from_process())
}

fn load_with(path: &Path, env: &Env) -> Result<Settings, ConfigErrors> {
    let mut errors = Collector::default();
    let settings =
        inputs::read(path, &mut errors).and_then(|i| validate::validate(i, env, &mut errors));
    match settings {
        Some(s) if errors.is_empty() => Ok(s),
        _ => Err(errors.into_errors()),
    }
}

#[cfg(test)]
mod tests;
