//! The pin directory must live on a bpffs mount: pinning anywhere else fails
//! deep inside the loader with a bare errno, so check up front and say so.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use aya::maps::MapData;
use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

/// Makes sure `dir` exists on bpffs, creating it (and missing parents) if the
/// nearest existing ancestor is on bpffs.
pub fn ensure_pin_dir(dir: &Path) -> Result<()> {
    let existing = dir
        .ancestors()
        .find(|ancestor| ancestor.exists())
        .unwrap_or(Path::new("/"));
    let fs = statfs(existing).with_context(|| {
        format!(
            "--bpf-pin-dir {}: cannot statfs {}",
            dir.display(),
            existing.display()
        )
    })?;
    if fs.filesystem_type() != BPF_FS_MAGIC {
        bail!(
            "--bpf-pin-dir {}: {} is not on a bpffs mount (filesystem type {:#x}); \
             use a directory under a bpffs mount such as /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)",
            dir.display(),
            existing.display(),
            fs.filesystem_type().0
        );
    }
    if existing != dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--bpf-pin-dir {}: cannot create it", dir.display()))?;
    } else if !dir.is_dir() {
        bail!(
            "--bpf-pin-dir {}: exists and is not a directory",
            dir.display()
        );
    }
    Ok(())
}

/// Holds the pin directory for this agent: two agents on one pin dir would
/// each rewrite the other's maps. The lock is the kernel's (`flock` on the
/// directory), released when this is dropped or the process ends, also
/// after `kill -9`.
pub struct PinDirLock {
    _locked: nix::fcntl::Flock<std::fs::File>,
}

/// Takes the pin directory's lock, or fails naming the process that holds
/// it.
pub fn lock_pin_dir(dir: &Path) -> Result<PinDirLock> {
    use std::os::unix::fs::MetadataExt as _;
    let file = std::fs::File::open(dir)
        .with_context(|| format!("--bpf-pin-dir {}: cannot open it", dir.display()))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(locked) => Ok(PinDirLock { _locked: locked }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let inode = std::fs::metadata(dir).map(|meta| meta.ino()).unwrap_or(0);
            let holder = lock_holder(inode)
                .map(|pid| format!("process {pid}"))
                .unwrap_or_else(|| "another process".to_owned());
            bail!(
                "--bpf-pin-dir {}: {holder} (another weft agent?) already uses it; one agent per pin dir",
                dir.display()
            )
        }
        Err((_, errno)) => bail!("--bpf-pin-dir {}: cannot lock it: {errno}", dir.display()),
    }
}

/// The pid holding a flock on inode `inode`, from /proc/locks.
fn lock_holder(inode: u64) -> Option<u32> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 00:1f:5678 0 EOF"
        let position = fields.iter().position(|field| *field == "FLOCK")?;
        let pid = fields.get(position + 3)?.parse().ok()?;
        let device_inode = fields.get(position + 4)?;
        let lock_inode: u64 = device_inode.rsplit(':').next()?.parse().ok()?;
        (lock_inode == inode).then_some(pid)
    })
}

/// Opens `<pin_dir>/<name>`, a map a running (or stopped) agent pinned: the
/// one opener every reader of pinned maps uses, so a missing pin reads the
/// same everywhere.
pub fn open_pinned_map(pin_dir: &Path, name: &str) -> Result<MapData> {
    let path = pin_dir.join(name);
    MapData::from_pin(&path).with_context(|| {
        format!(
            "cannot open pinned map {} (is an agent using this --bpf-pin-dir?)",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder() {
        let dir = std::env::temp_dir().join(format!("weft-lock-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = lock_pin_dir(&dir).unwrap();
        let second = lock_pin_dir(&dir).err().expect("a second lock was granted");
        assert!(
            second
                .to_string()
                .contains(&format!("process {}", std::process::id())),
            "{second}"
        );
        drop(first);
        lock_pin_dir(&dir).expect("the lock was not released");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
