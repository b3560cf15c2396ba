//! The FUSE side: every operation passed through to the backing directory, and told to the
//! model ([`crate::model::State`]). After a cut every call fails with EIO.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::io::FromRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

use crate::model::{State, ROOT};

const TTL: Duration = Duration::from_secs(1);

/// What the control side shares with the filesystem.
pub struct Shared {
    pub state: State,
    /// Sync calls (fsync, fdatasync, directory fsync) seen since the mount.
    pub syncs: u64,
    /// Cut the power at this sync call (it fails, and nothing of it is durable).
    pub cut_at_sync: Option<u64>,
    /// The last cut's report, for the control side.
    pub last_cut: Option<crate::model::CutReport>,
    /// An error met while cutting (the backing directory may then be half rebuilt).
    pub cut_error: Option<String>,
}

impl Shared {
    pub fn cut_now(&mut self) {
        if self.state.cut {
            return;
        }
        match self.state.cut() {
            Ok(r) => self.last_cut = Some(r),
            Err(e) => {
                self.cut_error = Some(format!(
                    "rebuilding {} as durable failed: {e}",
                    self.state.backing.display()
                ))
            }
        }
    }
}

pub struct PowerFs {
    shared: Arc<Mutex<Shared>>,
    handles: HashMap<u64, (u64, fs::File)>,
    next_fh: u64,
}

impl PowerFs {
    pub fn new(shared: Arc<Mutex<Shared>>) -> PowerFs {
        PowerFs {
            shared,
            handles: HashMap::new(),
            next_fh: 1,
        }
    }
}

pub fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH
    }
}

fn attr(ino: u64, m: &fs::Metadata) -> FileAttr {
    let t = m.file_type();
    let kind = if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else if t.is_file() {
        FileType::RegularFile
    } else {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            FileType::NamedPipe
        } else if t.is_socket() {
            FileType::Socket
        } else if t.is_char_device() {
            FileType::CharDevice
        } else {
            FileType::BlockDevice
        }
    };
    FileAttr {
        ino,
        size: m.len(),
        blocks: m.blocks(),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind,
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: m.blksize() as u32,
        flags: 0,
    }
}

fn open_raw(path: &Path, flags: i32, mode: u32) -> io::Result<fs::File> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path; the fd returned is owned by the File.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { fs::File::from_raw_fd(fd) })
}

/// The flags a backing file is opened with: read-write when writing (the model reads what a
/// write overwrites), never appending (the kernel gives the offset), never creating.
fn backing_flags(flags: i32) -> i32 {
    let mut f = flags & !(libc::O_APPEND | libc::O_CREAT | libc::O_EXCL | libc::O_DIRECT);
    if f & libc::O_ACCMODE == libc::O_WRONLY {
        f = (f & !libc::O_ACCMODE) | libc::O_RDWR;
    }
    f
}

macro_rules! alive {
    ($g:expr, $reply:expr) => {
        if $g.state.cut {
            $reply.error(libc::EIO);
            return;
        }
    };
}

impl Filesystem for PowerFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let mut g = lock(&self.shared);
        alive!(g, reply);
        match g.state.lookup(parent, name) {
            Ok((id, m)) => reply.entry(&TTL, &attr(id, &m), 0),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, fh: Option<u64>, reply: ReplyAttr) {
        let g = lock(&self.shared);
        alive!(g, reply);
        let m = match fh.and_then(|fh| self.handles.get(&fh)) {
            Some((_, f)) => f.metadata(),
            None => match g.state.path(ino) {
                Some(p) => fs::symlink_metadata(p),
                None => Err(io::Error::from_raw_os_error(libc::ENOENT)),
            },
        };
        match m {
            Ok(m) => reply.attr(&TTL, &attr(ino, &m)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let mut g = lock(&self.shared);
        alive!(g, reply);
        let Some(path) = g.state.path(ino) else {
            reply.error(libc::ENOENT);
            return;
        };
        let r = (|| -> io::Result<fs::Metadata> {
            if let Some(size) = size {
                let own;
                let f = match fh.and_then(|fh| self.handles.get(&fh)) {
                    Some((_, f)) => f,
                    None => {
                        own = fs::OpenOptions::new().read(true).write(true).open(&path)?;
                        &own
                    }
                };
                g.state.before_truncate(ino, f, size);
                f.set_len(size)?;
            }
            if let Some(mode) = mode {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(&path, uid, gid)?;
            }
            if atime.is_some() || mtime.is_some() {
                let ts = |t: Option<TimeOrNow>| match t {
                    None => libc::timespec {
                        tv_sec: 0,
                        tv_nsec: libc::UTIME_OMIT,
                    },
                    Some(TimeOrNow::Now) => libc::timespec {
                        tv_sec: 0,
                        tv_nsec: libc::UTIME_NOW,
                    },
                    Some(TimeOrNow::SpecificTime(t)) => {
                        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
                        libc::timespec {
                            tv_sec: d.as_secs() as libc::time_t,
                            tv_nsec: d.subsec_nanos() as libc::c_long,
                        }
                    }
                };
                let times = [ts(atime), ts(mtime)];
                let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
                // SAFETY: valid path and a two-element timespec array.
                let rc = unsafe {
                    libc::utimensat(
                        libc::AT_FDCWD,
                        c.as_ptr(),
                        times.as_ptr(),
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                };
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            fs::symlink_metadata(&path)
        })();
        match r {
            Ok(m) => {
                g.state.set_meta(ino, &m);
                reply.attr(&TTL, &attr(ino, &m))
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        let g = lock(&self.shared);
        alive!(g, reply);
        match g.state.path(ino).map(fs::read_link) {
            Some(Ok(t)) => reply.data(t.as_os_str().as_bytes()),
            Some(Err(e)) => reply.error(errno(&e)),
            None => reply.error(libc::ENOENT),
        }
    }

    fn mknod(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let mut g = lock(&self.shared);
        alive!(g, reply);
        if parent == ROOT && name == crate::model::META {
            reply.error(libc::EPERM);
            return;
        }
        let Some(p) = g.state.child_path(parent, name) else {
            reply.error(libc::ENOENT);
            return;
        };
        let r = std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(io::Error::from)
            .and_then(|c| {
                // SAFETY: valid path.
                let rc = unsafe { libc::mknod(c.as_ptr(), mode, libc::dev_t::from(rdev)) };
                if rc == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            })
            .and_then(|()| g.state.created(parent, name));
        match r {
            Ok((id, m)) => reply.entry(&TTL, &attr(id, &m), 0),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let mut g = lock(&self.shared);
        alive!(g, reply);
        if parent == ROOT && name == crate::model::META {
            reply.error(libc::EPERM);
            return;
        }
        let Some(p) = g.state.child_path(parent, name) else {
            reply.error(libc::ENOENT);
            return;
        };
        use std::os::unix::fs::DirBuilderExt;
        let r = fs::DirBuilder::new()
            .mode(mode & 0o7777)
            .create(&p)
            .and_then(|()| g.state.created(parent, name));
        match r {
            Ok((id, m)) => reply.entry(&TTL, &attr(id, &m), 0),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let mut g = lock(&self.shared);
        alive!(g, reply);
        match g.state.remove(parent, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let mut g = lock(&self.shared);
        alive!(g, reply);
        match g.state.remove(parent, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn symlink(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let mut g = lock(&self.shared);
        alive!(g, reply);
        let Some(p) = g.state.child_path(parent, link_name) else {
            reply.error(libc::ENOENT);
            return;
        };
        let r = std::os::unix::fs::symlink(target, &p)
            .and_then(|()| g.state.created(parent, link_name));
        match r {
            Ok((id, m)) => reply.entry(&TTL, &attr(id, &m), 0),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let mut g = lock(&self.shared);
        alive!(g, reply);
        if newparent == ROOT && newname == crate::model::META {
            reply.error(libc::EPERM);
            return;
        }
        match g.state.rename(parent, name, newparent, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn link(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let mut g = lock(&self.shared);
        alive!(g, reply);
        let (Some(from), Some(to)) = (g.state.path(ino), g.state.child_path(newparent, newname))
        else {
            reply.error(libc::ENOENT);
            return;
        };
        if g.state.nodes.get(&ino).is_some_and(|n| n.grave) {
            reply.error(libc::ENOENT);
            return;
        }
        match fs::hard_link(&from, &to).and_then(|()| fs::symlink_metadata(&to)) {
            Ok(m) => {
                g.state.linked(ino, newparent, newname);
                reply.entry(&TTL, &attr(ino, &m), 0)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let mut g = lock(&self.shared);
        alive!(g, reply);
        let Some(path) = g.state.path(ino) else {
            reply.error(libc::ENOENT);
            return;
        };
        let r = (|| {
            let f = open_raw(&path, backing_flags(flags) & !libc::O_TRUNC, 0)?;
            if flags & libc::O_TRUNC != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY {
                g.state.before_truncate(ino, &f, 0);
                f.set_len(0)?;
            }
            Ok::<_, io::Error>(f)
        })();
        match r {
            Ok(f) => {
                let fh = self.next_fh;
                self.next_fh += 1;
                self.handles.insert(fh, (ino, f));
                reply.opened(fh, 0)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut g = lock(&self.shared);
        alive!(g, reply);
        if parent == ROOT && name == crate::model::META {
            reply.error(libc::EPERM);
            return;
        }
        let Some(p) = g.state.child_path(parent, name) else {
            reply.error(libc::ENOENT);
            return;
        };
        let existed = fs::symlink_metadata(&p).is_ok();
        let r = (|| {
            if existed && flags & libc::O_EXCL != 0 {
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
            let f = open_raw(
                &p,
                (backing_flags(flags) & !libc::O_TRUNC) | libc::O_CREAT,
                mode & 0o7777,
            )?;
            let (id, _) = if existed {
                g.state.lookup(parent, name)?
            } else {
                g.state.created(parent, name)?
            };
            if existed && flags & libc::O_TRUNC != 0 {
                g.state.before_truncate(id, &f, 0);
                f.set_len(0)?;
            }
            let m = f.metadata()?;
            Ok::<_, io::Error>((id, m, f))
        })();
        match r {
            Ok((id, m, f)) => {
                let fh = self.next_fh;
                self.next_fh += 1;
                self.handles.insert(fh, (id, f));
                reply.created(&TTL, &attr(id, &m), 0, fh, 0)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let g = lock(&self.shared);
        alive!(g, reply);
        drop(g);
        let Some((_, f)) = self.handles.get(&fh) else {
            reply.error(libc::EBADF);
            return;
        };
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match f.read_at(&mut buf[done..], offset.max(0) as u64 + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    reply.error(errno(&e));
                    return;
                }
            }
        }
        reply.data(&buf[..done]);
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let mut g = lock(&self.shared);
        alive!(g, reply);
        let Some((node, f)) = self.handles.get(&fh) else {
            reply.error(libc::EBADF);
            return;
        };
        let off = offset.max(0) as u64;
        g.state.before_write(*node, f, off, data);
        match f.write_all_at(data, off) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lo: u64, reply: ReplyEmpty) {
        let g = lock(&self.shared);
        alive!(g, reply);
        reply.ok();
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles.remove(&fh);
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, fh: u64, _datasync: bool, reply: ReplyEmpty) {
        let mut g = lock(&self.shared);
        alive!(g, reply);
        g.syncs += 1;
        if g.cut_at_sync == Some(g.syncs) {
            g.cut_now();
            reply.error(libc::EIO);
            return;
        }
        let size = match self.handles.get(&fh) {
            Some((_, f)) => f.metadata().map(|m| m.len()),
            None => match g.state.path(ino) {
                Some(p) => fs::metadata(p).map(|m| m.len()),
                None => Err(io::Error::from_raw_os_error(libc::ENOENT)),
            },
        };
        match size {
            Ok(size) => {
                g.state.sync_file(ino, size);
                reply.ok()
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        let g = lock(&self.shared);
        alive!(g, reply);
        match g.state.path(ino) {
            Some(p) if p.is_dir() => reply.opened(0, 0),
            Some(_) => reply.error(libc::ENOTDIR),
            None => reply.error(libc::ENOENT),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let mut g = lock(&self.shared);
        alive!(g, reply);
        let Some(path) = g.state.path(ino) else {
            reply.error(libc::ENOENT);
            return;
        };
        let rd = match fs::read_dir(&path) {
            Ok(rd) => rd,
            Err(e) => {
                reply.error(errno(&e));
                return;
            }
        };
        let mut names: Vec<_> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .filter(|n| !(ino == ROOT && n == crate::model::META))
            .collect();
        names.sort();
        let mut entries = vec![
            (ino, FileType::Directory, ".".into()),
            (ino, FileType::Directory, "..".into()),
        ];
        for n in names {
            if let Ok((id, m)) = g.state.lookup(ino, &n) {
                entries.push((id, attr(id, &m).kind, n));
            }
        }
        for (i, (id, kind, name)) in entries.into_iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(id, (i + 1) as i64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _ds: bool, reply: ReplyEmpty) {
        let mut g = lock(&self.shared);
        alive!(g, reply);
        g.syncs += 1;
        if g.cut_at_sync == Some(g.syncs) {
            g.cut_now();
            reply.error(libc::EIO);
            return;
        }
        g.state.sync_dir(ino);
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let g = lock(&self.shared);
        alive!(g, reply);
        let c = match std::ffi::CString::new(g.state.backing.as_os_str().as_bytes()) {
            Ok(c) => c,
            Err(_) => {
                reply.error(libc::EIO);
                return;
            }
        };
        // SAFETY: a zeroed statvfs filled by the call; valid path.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
        if rc != 0 {
            reply.error(errno(&io::Error::last_os_error()));
            return;
        }
        reply.statfs(
            s.f_blocks,
            s.f_bfree,
            s.f_bavail,
            s.f_files,
            s.f_ffree,
            s.f_bsize as u32,
            s.f_namemax as u32,
            s.f_frsize as u32,
        );
    }

    fn access(&mut self, _req: &Request<'_>, ino: u64, _mask: i32, reply: ReplyEmpty) {
        let g = lock(&self.shared);
        alive!(g, reply);
        match g.state.path(ino) {
            Some(p) if fs::symlink_metadata(&p).is_ok() => reply.ok(),
            _ => reply.error(libc::ENOENT),
        }
    }
}
