//! A private containerd, the runtime a Kubernetes node hands images to:
//! its own socket, root and state in a throw-away directory, without the
//! CRI plugin (no streaming server, no CNI) or anything that writes outside
//! that directory; stopped, unmounted and removed when dropped, also when a
//! test fails.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::process::{spawn_daemon, stop, wait_ready};

/// The namespace kubelet's images live in: what is imported here is what
/// a DaemonSet finds.
pub const KUBERNETES_NAMESPACE: &str = "k8s.io";

pub struct Containerd {
    dir: PathBuf,
    socket: PathBuf,
    pid_file: PathBuf,
}

impl Containerd {
    /// Starts containerd in `dir` (created, and removed on drop) and waits
    /// until it answers.
    pub fn start(dir: &Path) -> Result<Self> {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let containerd = Self {
            dir: dir.to_owned(),
            socket: dir.join("containerd.sock"),
            pid_file: dir.join("containerd.pid"),
        };
        let config = dir.join("config.toml");
        fs::write(
            &config,
            format!(
                "version = 2\n\
                 root = \"{root}\"\n\
                 state = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.internal.v1.opt\", \"io.containerd.tracing.processor.v1.otlp\"]\n\
                 [grpc]\n  address = \"{socket}\"\n",
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                socket = containerd.socket.display(),
            ),
        )?;
        let mut command = Command::new("containerd");
        command.arg("--config").arg(&config);
        let log = dir.join("containerd.log");
        spawn_daemon(command, &log, &containerd.pid_file)?;
        wait_ready(
            "containerd",
            &containerd.pid_file,
            &log,
            Duration::from_secs(20),
            || {
                containerd
                    .ctr(&["version"])
                    .output()
                    .is_ok_and(|out| out.status.success())
            },
        )?;
        Ok(containerd)
    }

    /// `ctr` against this containerd, in Kubernetes' namespace.
    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ctr");
        command
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", KUBERNETES_NAMESPACE])
            .args(args);
        command
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = stop(&self.pid_file, Duration::from_secs(10));
        // A container that outlived a failed test leaves its rootfs and
        // shm mounted under root/ and state/.
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|line| line.split_whitespace().nth(1))
            .filter(|point| Path::new(point).starts_with(&self.dir))
            .collect();
        under.sort_by_key(|point| std::cmp::Reverse(point.len()));
        for point in under {
            let _ = Command::new("umount").args(["-l", point]).status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
