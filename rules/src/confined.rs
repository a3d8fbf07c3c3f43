//! Reading rules and lists from one directory and nothing outside it: the loader behind
//! every rule set a running engine publishes (`rules.dir` in shards.toml).
//!
//! A reload names a path, and whoever can name a path must not be able to make the engine
//! read (and quote back in an error) a file it was not meant to read, nor hang on one. So:
//! - every open goes through `openat2(rules.dir, path, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`:
//!   the kernel refuses absolute paths, `..` above the directory and symlinks that lead out,
//!   at open time (no check-then-open race);
//! - opens are non-blocking and only regular files are read (a FIFO would block the reader
//!   in `open`, a device never ends);
//! - reads stop at the size limit whatever the file's metadata says (`/proc` files and
//!   devices report 0 bytes).
//!
//! Errors name the path as given and never carry a byte of the file.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::Loader;

/// A directory that rules and lists are read from, and only from.
#[derive(Debug)]
pub struct Confined {
    /// The directory as configured: paths handed to the loader start with it.
    root: PathBuf,
    /// The directory itself, opened once (`O_PATH`): a rename of its path later changes
    /// nothing.
    dir: OwnedFd,
}

/// `struct open_how` of openat2(2) (libc's is non-exhaustive, so it cannot be built).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Why a path is refused before anything is opened.
fn refused(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, message)
}

impl Confined {
    /// Opens `root` (a directory) as the confinement.
    pub fn open(root: &Path) -> io::Result<Confined> {
        let path = CString::new(root.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
        // SAFETY: a valid NUL-terminated path; the returned descriptor is owned below.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Confined {
            root: root.to_path_buf(),
            // SAFETY: `fd` was just opened and is owned by nobody else.
            dir: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `path` with the root taken off. Paths under the root come from the rules files
    /// themselves (a list beside its rules file); anything else is refused here, before
    /// the kernel is asked.
    fn relative<'a>(&self, path: &'a Path) -> io::Result<&'a Path> {
        let rel = match path.strip_prefix(&self.root) {
            Ok(rel) => rel,
            Err(_) if path.is_absolute() => {
                return Err(refused(format!(
                    "{}: outside rules.dir ({})",
                    path.display(),
                    self.root.display()
                )));
            }
            Err(_) => path,
        };
        if rel.as_os_str().is_empty() {
            return Ok(Path::new("."));
        }
        Ok(rel)
    }

    /// Opens `rel` beneath the root, never following a link out of it.
    fn open_beneath(&self, shown: &Path, rel: &Path, flags: libc::c_int) -> io::Result<File> {
        let c_path = CString::new(rel.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
        let how = OpenHow {
            flags: (flags | libc::O_CLOEXEC | libc::O_NOCTTY) as u64,
            mode: 0,
            resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
        };
        // SAFETY: valid descriptor, NUL-terminated path and an `open_how` of the size given.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.dir.as_raw_fd(),
                c_path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EXDEV) | Some(libc::ELOOP) => refused(format!(
                    "{}: leads out of rules.dir ({})",
                    shown.display(),
                    self.root.display()
                )),
                Some(libc::ENOSYS) => io::Error::new(
                    io::ErrorKind::Unsupported,
                    "confined reads need openat2 (Linux 5.6 or newer)",
                ),
                _ => e,
            });
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        Ok(File::from(unsafe {
            OwnedFd::from_raw_fd(fd as libc::c_int)
        }))
    }
}

/// Reads at most `bytes_max` bytes of a regular file, as UTF-8.
fn read_regular(file: File, shown: &Path, bytes_max: u64) -> io::Result<String> {
    if !file.metadata()?.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}: not a regular file (only regular files are read: no FIFO, device, socket or directory)",
                shown.display()
            ),
        ));
    }
    let mut bytes = Vec::new();
    file.take(bytes_max.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > bytes_max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than the limit of {bytes_max} bytes"),
        ));
    }
    String::from_utf8(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

impl Loader for Confined {
    fn read(&self, path: &Path, bytes_max: u64) -> io::Result<String> {
        let rel = self.relative(path)?;
        let file = self.open_beneath(path, rel, libc::O_RDONLY | libc::O_NONBLOCK)?;
        read_regular(file, path, bytes_max)
    }

    fn rules_in(&self, path: &Path) -> io::Result<Option<Vec<PathBuf>>> {
        let rel = self.relative(path)?;
        let dir = match self.open_beneath(path, rel, libc::O_RDONLY | libc::O_DIRECTORY) {
            Ok(dir) => dir,
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(None),
            Err(e) => return Err(e),
        };
        // The names come from the descriptor just opened beneath the root; every file is
        // then opened beneath it again by `read`.
        let listing = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
        let mut files: Vec<PathBuf> = listing
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| path.join(e.file_name()))
            .filter(|p| p.extension().is_some_and(|x| x == "rules"))
            .collect();
        files.sort();
        Ok(Some(files))
    }
}

/// A reload's path, relative to `rules.dir`, checked before it is joined to it: no absolute
/// path, no `..`. (Symlinks are the kernel's to judge, at open.)
pub fn join_relative(root: &Path, requested: &str) -> io::Result<PathBuf> {
    let rel = Path::new(requested);
    if rel.is_absolute() {
        return Err(refused(format!(
            "`{requested}`: absolute paths are refused; name a path relative to rules.dir ({})",
            root.display()
        )));
    }
    if rel.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(refused(format!(
            "`{requested}`: `..` is refused; name a path inside rules.dir ({})",
            root.display()
        )));
    }
    Ok(root.join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const SECRET: &str = "TOP-SECRET-LINE";

    /// A scratch tree: `root/` (the confinement) beside `outside/secret.txt`.
    struct Tree {
        base: PathBuf,
    }

    impl Tree {
        fn new(name: &str) -> Tree {
            let base = std::env::temp_dir().join(format!(
                "verdict-confined-{name}-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            std::fs::create_dir_all(base.join("root/lists")).unwrap();
            std::fs::create_dir_all(base.join("outside")).unwrap();
            std::fs::write(base.join("outside/secret.txt"), SECRET).unwrap();
            std::fs::write(
                base.join("root/a.rules"),
                "rule r { when amount > 1 score 1 }\n",
            )
            .unwrap();
            std::fs::write(base.join("root/lists/l.txt"), "x\n").unwrap();
            Tree { base }
        }

        fn root(&self) -> PathBuf {
            self.base.join("root")
        }

        fn confined(&self) -> Confined {
            Confined::open(&self.root()).unwrap()
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }

    fn refused_without_quoting(result: io::Result<String>) -> String {
        let e = result.expect_err("refused");
        let text = e.to_string();
        assert!(!text.contains(SECRET), "{text}");
        text
    }

    #[test]
    fn files_inside_are_read_by_full_or_relative_path() {
        let tree = Tree::new("inside");
        let c = tree.confined();
        let full = c.read(&tree.root().join("a.rules"), 1 << 20).unwrap();
        assert!(full.starts_with("rule r"));
        assert_eq!(c.read(Path::new("lists/l.txt"), 1 << 20).unwrap(), "x\n");
        // `..` that stays inside is the kernel's to allow.
        assert_eq!(
            c.read(&tree.root().join("lists/../lists/l.txt"), 1 << 20)
                .unwrap(),
            "x\n"
        );
        // A symlink that stays inside is fine too.
        symlink("lists/l.txt", tree.root().join("link.txt")).unwrap();
        assert_eq!(
            c.read(&tree.root().join("link.txt"), 1 << 20).unwrap(),
            "x\n"
        );
        let listed = c.rules_in(&tree.root()).unwrap().unwrap();
        assert_eq!(listed, vec![tree.root().join("a.rules")]);
        assert_eq!(c.rules_in(&tree.root().join("a.rules")).unwrap(), None);
    }

    #[test]
    fn ways_out_are_refused_and_quote_nothing() {
        let tree = Tree::new("out");
        let c = tree.confined();
        let secret = tree.base.join("outside/secret.txt");
        // An absolute path elsewhere.
        let text = refused_without_quoting(c.read(&secret, 1 << 20));
        assert!(text.contains("outside rules.dir"), "{text}");
        // `..` out of the root.
        let up = tree.root().join("../outside/secret.txt");
        let text = refused_without_quoting(c.read(&up, 1 << 20));
        assert!(text.contains("leads out of rules.dir"), "{text}");
        // A symlink out, as a file and as a directory on the way.
        symlink(&secret, tree.root().join("evil.rules")).unwrap();
        let text = refused_without_quoting(c.read(&tree.root().join("evil.rules"), 1 << 20));
        assert!(text.contains("leads out of rules.dir"), "{text}");
        symlink(tree.base.join("outside"), tree.root().join("evil_dir")).unwrap();
        let via = tree.root().join("evil_dir/secret.txt");
        let text = refused_without_quoting(c.read(&via, 1 << 20));
        assert!(text.contains("leads out of rules.dir"), "{text}");
        // A listing of the root leaves the link out (it is not a regular file there).
        let listed = c.rules_in(&tree.root()).unwrap().unwrap();
        assert_eq!(listed, vec![tree.root().join("a.rules")]);
    }

    #[test]
    fn a_fifo_a_device_and_an_endless_file_fail_fast() {
        let tree = Tree::new("special");
        let c = tree.confined();
        let fifo = tree.root().join("pipe.rules");
        let fifo_c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo_c.as_ptr(), 0o600) }, 0);
        // Without O_NONBLOCK this open would wait for a writer forever.
        let text = refused_without_quoting(c.read(&fifo, 1 << 20));
        assert!(text.contains("not a regular file"), "{text}");
        // A character device made inside the root (as root), else a symlink to one.
        let zero = tree.root().join("zero.rules");
        let zero_c = CString::new(zero.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid path; /dev/zero is char device 1:5.
        let made =
            unsafe { libc::mknod(zero_c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 5)) };
        if made == 0 {
            let text = refused_without_quoting(c.read(&zero, 1 << 20));
            assert!(text.contains("not a regular file"), "{text}");
        }
        let dev_link = tree.root().join("devzero.rules");
        symlink("/dev/zero", &dev_link).unwrap();
        let text = refused_without_quoting(c.read(&dev_link, 1 << 20));
        assert!(text.contains("leads out"), "{text}");
        // A sparse file larger than the limit: refused after limit + 1 bytes, not read whole.
        let big = tree.root().join("big.rules");
        File::create(&big).unwrap().set_len(1 << 30).unwrap();
        let text = refused_without_quoting(c.read(&big, 1 << 20));
        assert!(text.contains("larger than the limit"), "{text}");
        // A directory is not a file to read.
        let text = refused_without_quoting(c.read(&tree.root().join("lists"), 1 << 20));
        assert!(text.contains("not a regular file"), "{text}");
    }

    #[test]
    fn reload_paths_are_relative_and_stay_down() {
        let root = Path::new("/srv/rules");
        assert_eq!(
            join_relative(root, "team/a.rules").unwrap(),
            root.join("team/a.rules")
        );
        let e = join_relative(root, "/etc/shadow").unwrap_err().to_string();
        assert!(e.contains("absolute paths are refused"), "{e}");
        let e = join_relative(root, "team/../../etc/shadow")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`..` is refused"), "{e}");
    }
}
