//! Long-running lab processes (etcd, agents): started detached with their
//! output in a log file and their pid in a pid file, so a later `lab down`
//! in another process can stop them; stopped with SIGTERM, then SIGKILL.

use std::{
    fs::{self, File},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    sys::{
        signal::{Signal, kill},
        wait::{WaitPidFlag, waitpid},
    },
    unistd::Pid,
};

/// Starts `command` detached (own process group, so a terminal Ctrl-C goes
/// to the lab's own handler, which stops it in order), logging to `log` and
/// recording `<pid> <program>` in `pid_file`.
pub fn spawn_daemon(mut command: Command, log: &Path, pid_file: &Path) -> Result<u32> {
    let program = command.get_program().to_string_lossy().into_owned();
    let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone()?;
    command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {program}"))?;
    let pid = child.id();
    fs::write(pid_file, format!("{pid} {program}\n"))
        .with_context(|| format!("cannot write {}", pid_file.display()))?;
    // The child is reaped in stop()/is_running() (or by init once the lab
    // CLI exits); dropping the handle does not kill it.
    drop(child);
    Ok(pid)
}

/// Bounds what `command` will run to `capabilities` (numbers, as in
/// linux/capability.h), with no new privileges, as systemd's
/// `CapabilityBoundingSet=` and `NoNewPrivileges=yes` do: run as root, it
/// holds exactly those after exec, and so does every program it runs.
pub fn bound_capabilities(command: &mut Command, capabilities: &[u32]) -> Result<()> {
    let last: u32 = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .context("cannot read /proc/sys/kernel/cap_last_cap")?
        .trim()
        .parse()
        .context("/proc/sys/kernel/cap_last_cap is not a number")?;
    let dropped: Vec<libc::c_ulong> = (0..=last)
        .filter(|cap| !capabilities.contains(cap))
        .map(libc::c_ulong::from)
        .collect();
    // SAFETY: prctl is async-signal-safe; the closure only makes those calls
    // on memory it owns.
    unsafe {
        command.pre_exec(move || {
            for cap in &dropped {
                if libc::prctl(libc::PR_CAPBSET_DROP, *cap, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Whether no process holds a `flock` on `path` (taken and released at
/// once to find out).
pub fn unlocked(path: &Path) -> Result<bool> {
    use std::os::fd::AsRawFd as _;
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    // Closing the file releases the lock if we took it.
    Ok(locked == 0)
}

/// The pid recorded in `pid_file`, if the process is still that program.
pub fn running_pid(pid_file: &Path) -> Option<u32> {
    let text = fs::read_to_string(pid_file).ok()?;
    let (pid, program) = text.trim().split_once(' ')?;
    let pid: u32 = pid.parse().ok()?;
    is_running(pid, program).then_some(pid)
}

/// Whether `pid` is alive (not a zombie) and was started from `program`;
/// the check on the program keeps a recycled pid from being signalled.
pub fn is_running(pid: u32, program: &str) -> bool {
    reap(pid);
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let argv0 = cmdline.split(|byte| *byte == 0).next().unwrap_or_default();
    if argv0 != program.as_bytes() {
        return false;
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Field 3, after the parenthesised command name, is the state.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

fn reap(pid: u32) {
    // Only succeeds for our own children; harmless otherwise.
    let _ = waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG));
}

/// Stops the process in `pid_file` (SIGTERM, then SIGKILL after `grace`) and
/// removes the file. Returns an error only if the process survives SIGKILL.
pub fn stop(pid_file: &Path, grace: Duration) -> Result<()> {
    let Ok(text) = fs::read_to_string(pid_file) else {
        return Ok(());
    };
    let (pid, program) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
    let Ok(pid) = pid.parse::<u32>() else {
        let _ = fs::remove_file(pid_file);
        return Ok(());
    };
    if is_running(pid, program) {
        signal_and_wait(pid, program, Signal::SIGTERM, grace);
        if is_running(pid, program) {
            signal_and_wait(pid, program, Signal::SIGKILL, Duration::from_secs(5));
        }
        if is_running(pid, program) {
            bail!("{program} (pid {pid}) survived SIGKILL");
        }
    }
    let _ = fs::remove_file(pid_file);
    Ok(())
}

/// Sends `signal` to `pid` and waits up to `timeout` for it to exit.
pub fn signal_and_wait(pid: u32, program: &str, signal: Signal, timeout: Duration) {
    let _ = kill(Pid::from_raw(pid as i32), signal);
    let deadline = Instant::now() + timeout;
    while is_running(pid, program) && Instant::now() < deadline {
        sleep(Duration::from_millis(20));
    }
}

/// Waits until `ready` says the process recorded in `pid_file` serves, for
/// at most `timeout`; fails with `what`'s log tail if it exits or times out.
pub fn wait_ready(
    what: &str,
    pid_file: &Path,
    log: &Path,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        if running_pid(pid_file).is_none() {
            bail!("{what} exited during start-up:\n{}", log_tail(log, 20));
        }
        if Instant::now() > deadline {
            bail!(
                "{what} was not ready within {timeout:?}:\n{}",
                log_tail(log, 20)
            );
        }
        sleep(Duration::from_millis(100));
    }
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
