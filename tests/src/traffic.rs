//! Real traffic between pods, checked end to end: a TCP transfer of a
//! deterministic pseudo-random stream whose digest both ends compute.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};

use crate::netns;

const CHUNK_WORDS: usize = 8192;

/// xorshift64*: a cheap deterministic stream, so a dropped, duplicated or
/// corrupted byte anywhere changes the digest.
struct Stream(u64);

impl Stream {
    fn next_word(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// FNV-1a over 64-bit words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest(u64);

impl Digest {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn add(&mut self, word: u64) {
        self.0 = (self.0 ^ word).wrapping_mul(0x0000_0100_0000_01b3);
    }
}

/// What a transfer moved and the digests of both ends.
#[derive(Debug)]
pub struct Transfer {
    pub bytes: u64,
    pub sent: Digest,
    pub received: Digest,
}

/// Sends `bytes` (a multiple of 64 KiB) over TCP from pod namespace
/// `client_ns` to `server_ip:port` in `server_ns`; `server_ip` is an IPv4 or
/// an IPv6 address.
pub fn tcp_transfer(
    server_ns: &str,
    server_ip: &str,
    port: u16,
    client_ns: &str,
    bytes: u64,
) -> Result<Transfer> {
    let chunk_bytes = (CHUNK_WORDS * 8) as u64;
    ensure!(
        bytes.is_multiple_of(chunk_bytes),
        "transfer size must be a multiple of {chunk_bytes}"
    );
    let address = socket_address(server_ip, port)?;
    let listener = netns::in_netns(server_ns, || Ok(TcpListener::bind(address)?))?;
    std::thread::scope(|scope| {
        let server = scope.spawn(move || -> Result<(u64, Digest)> {
            let (mut socket, _) = listener.accept()?;
            socket.set_read_timeout(Some(Duration::from_secs(60)))?;
            let mut digest = Digest::new();
            let mut buffer = vec![0u8; CHUNK_WORDS * 8];
            let mut pending = Vec::with_capacity(8);
            let mut total = 0u64;
            loop {
                let read = socket.read(&mut buffer)?;
                if read == 0 {
                    break;
                }
                total += read as u64;
                for byte in &buffer[..read] {
                    pending.push(*byte);
                    if pending.len() == 8 {
                        digest.add(u64::from_le_bytes(pending[..].try_into().expect("8 bytes")));
                        pending.clear();
                    }
                }
            }
            Ok((total, digest))
        });
        let sent = netns::in_netns(client_ns, || {
            let mut socket =
                TcpStream::connect_timeout(&address, Duration::from_secs(5)).context("connect")?;
            socket.set_write_timeout(Some(Duration::from_secs(60)))?;
            let mut stream = Stream(0x9e37_79b9_7f4a_7c15);
            let mut digest = Digest::new();
            let mut buffer = vec![0u8; CHUNK_WORDS * 8];
            for _ in 0..bytes / chunk_bytes {
                for slot in buffer.chunks_exact_mut(8) {
                    let word = stream.next_word();
                    digest.add(word);
                    slot.copy_from_slice(&word.to_le_bytes());
                }
                socket.write_all(&buffer)?;
            }
            socket.shutdown(std::net::Shutdown::Write)?;
            Ok(digest)
        })?;
        let (received_bytes, received) = server
            .join()
            .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
        ensure!(
            received_bytes == bytes,
            "received {received_bytes} of {bytes} bytes"
        );
        Ok(Transfer {
            bytes,
            sent,
            received,
        })
    })
}

/// Many-flow TCP request/response rate: `flows` connections from
/// `client_ns`, each sending one byte and waiting for the one-byte answer,
/// for `duration`; returns transactions per second.
pub fn tcp_rr_rate(
    server_ns: &str,
    server_ip: &str,
    port: u16,
    client_ns: &str,
    flows: usize,
    duration: Duration,
) -> Result<f64> {
    let address = socket_address(server_ip, port)?;
    let listener = netns::in_netns(server_ns, || Ok(TcpListener::bind(address)?))?;
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let listener = &listener;
        let servers: Vec<_> = (0..flows)
            .map(|_| {
                scope.spawn(move || -> Result<()> {
                    let (mut socket, _) = listener.accept()?;
                    socket.set_nodelay(true)?;
                    let mut byte = [0u8; 1];
                    while socket.read(&mut byte)? == 1 {
                        socket.write_all(&byte)?;
                    }
                    Ok(())
                })
            })
            .collect();
        let clients: Vec<_> = (0..flows)
            .map(|_| {
                let done = &done;
                scope.spawn(move || -> Result<u64> {
                    netns::in_netns(client_ns, || {
                        let mut socket =
                            TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
                        socket.set_nodelay(true)?;
                        let mut byte = [7u8; 1];
                        let mut transactions = 0u64;
                        while !done.load(std::sync::atomic::Ordering::Relaxed) {
                            socket.write_all(&byte)?;
                            socket.read_exact(&mut byte)?;
                            transactions += 1;
                        }
                        Ok(transactions)
                    })
                })
            })
            .collect();
        std::thread::sleep(duration);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut total = 0;
        for client in clients {
            total += client
                .join()
                .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        }
        for server in servers {
            server
                .join()
                .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
        }
        Ok(total as f64 / duration.as_secs_f64())
    })
}

/// `ip` (either family, without brackets) and `port` as a socket address.
pub fn socket_address(ip: &str, port: u16) -> Result<SocketAddr> {
    let ip: IpAddr = ip
        .parse()
        .with_context(|| format!("{ip:?} is not an IP address"))?;
    Ok(SocketAddr::new(ip, port))
}

/// One TCP connection from `client_ns` to `server_ip:port` (either family)
/// in `server_ns`, `message` bytes each way per transaction, one after the
/// other for `duration`; returns every transaction's round-trip time, in
/// order. With `cpu`, client and server run pinned to that CPU (as the
/// bench's same-CPU request/response rows are). (sockperf, the bench's
/// request/response tool, takes no IPv6 address in Debian 12's 3.7.)
pub fn tcp_rr_latencies(
    server_ns: &str,
    server_ip: &str,
    port: u16,
    client_ns: &str,
    message: usize,
    duration: Duration,
    cpu: Option<usize>,
) -> Result<Vec<Duration>> {
    let address = socket_address(server_ip, port)?;
    let listener = netns::in_netns(server_ns, || Ok(TcpListener::bind(address)?))?;
    std::thread::scope(|scope| {
        let server = scope.spawn(move || -> Result<()> {
            pin_current_thread(cpu)?;
            let (mut socket, _) = listener.accept()?;
            socket.set_nodelay(true)?;
            let mut buffer = vec![0u8; message];
            loop {
                match socket.read_exact(&mut buffer) {
                    Ok(()) => socket.write_all(&buffer)?,
                    Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                        return Ok(());
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        });
        let latencies = netns::in_netns(client_ns, || {
            pin_current_thread(cpu)?;
            let mut socket =
                TcpStream::connect_timeout(&address, Duration::from_secs(5)).context("connect")?;
            socket.set_nodelay(true)?;
            socket.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut buffer = vec![7u8; message];
            let mut latencies = Vec::new();
            let end = std::time::Instant::now() + duration;
            while std::time::Instant::now() < end {
                let started = std::time::Instant::now();
                socket.write_all(&buffer)?;
                socket.read_exact(&mut buffer)?;
                latencies.push(started.elapsed());
            }
            socket.shutdown(std::net::Shutdown::Write)?;
            Ok(latencies)
        })?;
        server
            .join()
            .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
        Ok(latencies)
    })
}

/// Pins the calling thread to `cpu`, if given.
fn pin_current_thread(cpu: Option<usize>) -> Result<()> {
    let Some(cpu) = cpu else {
        return Ok(());
    };
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).with_context(|| format!("no CPU {cpu}"))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("cannot pin to CPU {cpu}"))
}
