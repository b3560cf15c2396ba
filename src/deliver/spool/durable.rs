//! Filesystem steps that survive a power cut: private files, fsynced writes and directories, a
//! rename that never replaces, modes and the spool group.

use super::*;

/// Set once the "no RENAME_NOREPLACE here" warning has been logged.
pub(super) static NOREPLACE_FALLBACK_WARNED: AtomicBool = AtomicBool::new(false);

/// Gives a spool directory the spool group and mode 2770, explicitly (the umask must not
/// matter), and checks the setgid bit stuck. A directory already right is left alone, so a
/// spool prepared by the package (tmpfiles.d) need not belong to the service user.
pub(super) fn set_dir_mode(dir: &Path, gid: Option<libc::gid_t>) -> Result<(), SpoolError> {
    let meta = fs::metadata(dir).map_err(io_err("read", dir))?;
    let mut chowned = false;
    if let Some(gid) = gid {
        if meta.gid() != gid {
            // chown before chmod: changing the group may clear the setgid bit.
            std::os::unix::fs::chown(dir, None, Some(gid)).map_err(io_err("chown", dir))?;
            chowned = true;
        }
    }
    if chowned || meta.mode() & 0o7777 != DIR_MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
            .map_err(io_err("chmod", dir))?;
        let got = fs::metadata(dir).map_err(io_err("read", dir))?.mode() & 0o7777;
        if got != DIR_MODE {
            return Err(SpoolError::ModeNotApplied {
                path: dir.to_path_buf(),
                wanted: DIR_MODE,
                got,
            });
        }
    }
    Ok(())
}

/// Creates (truncating) a file 0640 in the spool group, never following a symlink.
pub(super) fn create_private_file(
    path: &Path,
    gid: Option<libc::gid_t>,
) -> Result<fs::File, SpoolError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err("create", path))?;
    if let Some(gid) = gid {
        let meta = file.metadata().map_err(io_err("read", path))?;
        if meta.gid() != gid {
            std::os::unix::fs::fchown(&file, None, Some(gid)).map_err(io_err("chown", path))?;
        }
    }
    file.set_permissions(fs::Permissions::from_mode(FILE_MODE))
        .map_err(io_err("chmod", path))?;
    Ok(file)
}

/// Creates a private file with `bytes` and fsyncs it (blocking).
pub(super) fn write_durably(
    path: &Path,
    gid: Option<libc::gid_t>,
    bytes: &[u8],
) -> Result<(), SpoolError> {
    let mut file = create_private_file(path, gid)?;
    file.write_all(bytes).map_err(io_err("write", path))?;
    file.sync_all().map_err(io_err("fsync", path))
}

/// `create_dir_all` whose every directory created is made durable (its parent fsynced), so
/// that a power cut after the first deliveries cannot take the spool itself away.
pub(super) fn create_dirs_durably(dir: &Path) -> Result<(), SpoolError> {
    let mut missing = Vec::new();
    let mut cur = dir;
    while fs::symlink_metadata(cur).is_err() {
        missing.push(cur);
        match cur.parent() {
            Some(p) if !p.as_os_str().is_empty() => cur = p,
            _ => break,
        }
    }
    for d in missing.into_iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => fsync_parent(d)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create", d)(e)),
        }
    }
    Ok(())
}

pub(super) fn fsync_parent(path: &Path) -> Result<(), SpoolError> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => fsync_dir(p),
        _ => fsync_dir(Path::new(".")),
    }
}

pub(super) fn fsync_dir(dir: &Path) -> Result<(), SpoolError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))
}

/// `rename(from, to)` that fails with EEXIST instead of replacing `to`.
#[cfg(target_os = "linux")]
pub(super) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let from = CString::new(from.as_os_str().as_bytes())?;
    let to = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn rename_noreplace(_from: &Path, _to: &Path) -> io::Result<()> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

/// The gid of a group name (getgrnam_r), or of a numeric gid not in the group database.
pub(super) fn resolve_group(group: &str, root: &Path) -> Result<libc::gid_t, SpoolError> {
    let unknown = || SpoolError::UnknownGroup {
        group: group.to_string(),
        root: root.to_path_buf(),
    };
    let Ok(cname) = CString::new(group) else {
        return Err(unknown());
    };
    let mut buf: Vec<libc::c_char> = vec![0; 1024];
    loop {
        // SAFETY: a zeroed `group` is a valid out-parameter (null pointers, zero gid).
        let mut entry: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; buf.len() is the real buffer size.
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut entry,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        match rc {
            libc::ERANGE if buf.len() < (1 << 20) => buf.resize(buf.len() * 2, 0),
            // "Not found" has several spellings (getgrnam_r(3)).
            0 | libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM if result.is_null() => {
                return group.parse::<libc::gid_t>().map_err(|_| unknown());
            }
            0 => return Ok(entry.gr_gid),
            rc => {
                return Err(SpoolError::GroupLookup {
                    group: group.to_string(),
                    root: root.to_path_buf(),
                    source: io::Error::from_raw_os_error(rc),
                })
            }
        }
    }
}
