//! The pin directory must live on a bpffs mount: pinning anywhere else fails
//! deep inside the loader with a bare errno, so check up front and say so.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
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
