//! systemd as a first-class citizen (zincati's habit): the service manager's notification
//! protocol (READY, STATUS, WATCHDOG, RELOADING, STOPPING) and the journal's native protocol,
//! both spoken directly over Unix datagram sockets, without libsystemd.

pub mod journal;
pub mod notify;
