//! `powerfs BACKING MOUNTPOINT CONTROL_SOCKET`: mounts powerfs and takes commands, one a line,
//! on a Unix socket: `cut` (the power goes now), `cut-at-sync K` (at the K-th sync call),
//! `torn SEED` (a cut keeps a prefix of the last unsynced write), `stats`, `unmount`. Each
//! answers one line. After a cut, BACKING holds only what was durable: mount it again.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [backing, mountpoint, socket] = args.as_slice() else {
        eprintln!("usage: powerfs BACKING MOUNTPOINT CONTROL_SOCKET");
        std::process::exit(2);
    };
    let mounted = match powerfs::mount(&PathBuf::from(backing), &PathBuf::from(mountpoint)) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let _ = std::fs::remove_file(socket);
    let listener = match UnixListener::bind(socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("powerfs: cannot listen on {socket}: {e}; choose a writable path");
            std::process::exit(1);
        }
    };
    let ctl = mounted.control();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let Ok(mut out) = stream.try_clone() else {
            continue;
        };
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let words: Vec<&str> = line.split_whitespace().collect();
            let answer = match words.as_slice() {
                ["cut"] => match ctl.cut() {
                    Ok(r) => format!("ok {r:?}"),
                    Err(e) => format!("error {e}"),
                },
                ["cut-at-sync", k] => match k.parse() {
                    Ok(k) => {
                        ctl.cut_at_sync(k);
                        "ok".to_string()
                    }
                    Err(_) => "error K must be a number".to_string(),
                },
                ["torn", seed] => match seed.parse() {
                    Ok(s) => {
                        ctl.torn_last_write(Some(s));
                        "ok".to_string()
                    }
                    Err(_) => "error SEED must be a number".to_string(),
                },
                ["stats"] => format!(
                    "ok syncs={} cut={} {:?}",
                    ctl.syncs(),
                    ctl.is_cut(),
                    ctl.stats()
                ),
                ["unmount"] => {
                    let _ = writeln!(out, "ok");
                    mounted.unmount();
                    let _ = std::fs::remove_file(socket);
                    return;
                }
                _ => "error commands: cut, cut-at-sync K, torn SEED, stats, unmount".to_string(),
            };
            if writeln!(out, "{answer}").is_err() {
                break;
            }
        }
    }
}
