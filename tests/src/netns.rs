//! Network namespaces: create, delete, and run code or programs inside one.
//!
//! Programs are started with `setns(CLONE_NEWNET)` only, not `ip netns exec`:
//! the latter also remounts /sys, which hides the bpffs at /sys/fs/bpf that
//! the agent pins its maps in.

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::PathBuf,
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::sched::{CloneFlags, setns};

/// Where iproute2 keeps named namespaces.
pub fn path(ns: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(ns)
}

pub fn add(ns: &str) -> Result<()> {
    run_host(&["ip", "netns", "add", ns])?;
    run_host(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
    Ok(())
}

pub fn delete(ns: &str) -> Result<()> {
    run_host(&["ip", "netns", "del", ns]).map(drop)
}

/// Names of every named network namespace on the host.
pub fn list() -> Result<Vec<String>> {
    let out = run_host(&["ip", "netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// A command that will run inside `ns` (network namespace only).
pub fn command(ns: &str, program: &str) -> Result<Command> {
    let file =
        File::open(path(ns)).with_context(|| format!("network namespace {ns} does not exist"))?;
    let mut command = Command::new(program);
    // SAFETY: setns is async-signal-safe; the closure only makes that call.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(command)
}

/// Runs `args` inside `ns`, returning stdout; a non-zero exit is an error
/// carrying the command and its stderr.
pub fn run(ns: &str, args: &[&str]) -> Result<String> {
    let (program, rest) = args.split_first().ok_or_else(|| anyhow!("empty command"))?;
    let mut command = command(ns, program)?;
    command.args(rest);
    output_of(command, &format!("[{ns}] {}", args.join(" ")))
}

/// Runs `args` inside `ns` with `input` on its standard input (e.g.
/// `iptables-restore`, `nft -f -`), returning stdout.
pub fn run_with_input(ns: &str, args: &[&str], input: &str) -> Result<String> {
    use std::io::Write as _;
    let (program, rest) = args.split_first().ok_or_else(|| anyhow!("empty command"))?;
    let mut command = command(ns, program)?;
    command
        .args(rest)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command
        .spawn()
        .with_context(|| format!("[{ns}] cannot run {}", args.join(" ")))?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("no stdin"))?
        .write_all(input.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "[{ns}] {} failed: {}\n{input}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `args` on the host, returning stdout.
pub fn run_host(args: &[&str]) -> Result<String> {
    let (program, rest) = args.split_first().ok_or_else(|| anyhow!("empty command"))?;
    let mut command = Command::new(program);
    command.args(rest);
    output_of(command, &args.join(" "))
}

fn output_of(mut command: Command, shown: &str) -> Result<String> {
    let output = command
        .output()
        .with_context(|| format!("cannot run `{shown}`"))?;
    if !output.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `work` on a thread that has entered `ns`, for code (sockets, /proc/sys
/// writes, aya queries) that must act inside the namespace.
pub fn in_netns<T: Send>(ns: &str, work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let file =
        File::open(path(ns)).with_context(|| format!("network namespace {ns} does not exist"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("cannot enter network namespace {ns}"))?;
                work()
            })
            .join()
            .map_err(|_| anyhow!("work inside {ns} panicked"))?
    })
}

/// Sends `frame` (from its Ethernet header on) out of `iface` in `ns`
/// through a raw packet socket, as a pod with CAP_NET_RAW can.
pub fn send_frame(ns: &str, iface: &str, frame: &[u8]) -> Result<()> {
    let iface = std::ffi::CString::new(iface)?;
    in_netns(ns, || {
        // SAFETY: plain socket calls with a zeroed sockaddr_ll naming the
        // interface; the socket is closed before returning.
        unsafe {
            let index = libc::if_nametoindex(iface.as_ptr());
            anyhow::ensure!(index != 0, "no interface {iface:?}");
            let socket = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            anyhow::ensure!(
                socket >= 0,
                "cannot open a packet socket: {}",
                std::io::Error::last_os_error()
            );
            let mut address: libc::sockaddr_ll = std::mem::zeroed();
            address.sll_family = libc::AF_PACKET as u16;
            address.sll_ifindex = index as i32;
            address.sll_halen = 6;
            let sent = libc::sendto(
                socket,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            let error = std::io::Error::last_os_error();
            libc::close(socket);
            anyhow::ensure!(sent == frame.len() as isize, "sendto: {error}");
        }
        Ok(())
    })
}

/// Sets a sysctl inside `ns` (e.g. `net/ipv4/ip_forward`).
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    in_netns(ns, || {
        let path = format!("/proc/sys/{key}");
        std::fs::write(&path, value)
            .with_context(|| format!("cannot write {value} to {path} in {ns}"))
    })
}
