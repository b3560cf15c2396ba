//! The process's exit codes (CONTRACT, "Exit codes and errors"), shared by the commands and
//! by the rooms that run as commands of their own (the digest, the daemon).

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 64;
pub const EXIT_CONFIG: u8 = 78;
