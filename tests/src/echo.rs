//! Echo servers in pods and the clients that check them: every request must
//! come back from the address it was sent to (a reply that skipped reverse
//! NAT comes from the backend's own address and does not count).

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::netns;

/// TCP and UDP echo on `port` in a pod's namespace, until dropped.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServer {
    /// Echoes on every IPv4 address of `ns`.
    pub fn start(ns: &str, port: u16) -> Result<Self> {
        Self::start_at(ns, IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
    }

    /// Echoes on `ip` (a pod's IPv6 address, say, next to a server
    /// [`EchoServer::start`]ed on the same port for IPv4).
    pub fn start_at(ns: &str, ip: IpAddr, port: u16) -> Result<Self> {
        let (tcp, udp) = netns::in_netns(ns, || {
            let tcp = TcpListener::bind((ip, port))?;
            tcp.set_nonblocking(true)?;
            let udp = UdpSocket::bind((ip, port))?;
            udp.set_read_timeout(Some(Duration::from_millis(50)))?;
            Ok((tcp, udp))
        })
        .with_context(|| format!("cannot listen on port {port} in {ns}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let tcp_stop = stop.clone();
        let tcp_thread = std::thread::spawn(move || {
            while !tcp_stop.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((socket, _)) => {
                        let stop = tcp_stop.clone();
                        std::thread::spawn(move || echo_tcp(socket, &stop));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        let udp_stop = stop.clone();
        let udp_thread = std::thread::spawn(move || {
            let mut buffer = [0u8; 2048];
            while !udp_stop.load(Ordering::Relaxed) {
                if let Ok((len, peer)) = udp.recv_from(&mut buffer) {
                    let _ = udp.send_to(&buffer[..len], peer);
                }
            }
        });
        Ok(Self {
            stop,
            threads: vec![tcp_thread, udp_thread],
        })
    }
}

fn echo_tcp(mut socket: TcpStream, stop: &AtomicBool) {
    let _ = socket.set_nonblocking(false);
    let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buffer = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match socket.read(&mut buffer) {
            Ok(0) => return,
            Ok(len) => {
                if socket.write_all(&buffer[..len]).is_err() {
                    return;
                }
            }
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One TCP connection from `client_ns` to `target`, `messages` requests on
/// it, each answered with the same bytes within `timeout`.
pub fn tcp_echo(
    client_ns: &str,
    target: SocketAddr,
    messages: usize,
    timeout: Duration,
) -> Result<()> {
    let mut session = TcpSession::connect(client_ns, target, timeout)?;
    for index in 0..messages {
        session.exchange(index)?;
    }
    Ok(())
}

/// An open connection for request/response checks over time.
pub struct TcpSession {
    socket: TcpStream,
    target: SocketAddr,
}

impl TcpSession {
    pub fn connect(client_ns: &str, target: SocketAddr, timeout: Duration) -> Result<Self> {
        let socket = netns::in_netns(client_ns, || {
            Ok(TcpStream::connect_timeout(&target, timeout)?)
        })
        .with_context(|| format!("cannot connect to {target} from {client_ns}"))?;
        socket.set_read_timeout(Some(timeout))?;
        socket.set_nodelay(true)?;
        Ok(Self { socket, target })
    }

    /// Sends request `index` and waits for its echo.
    pub fn exchange(&mut self, index: usize) -> Result<()> {
        let request = format!("request {index:06}\n");
        self.socket.write_all(request.as_bytes())?;
        let mut reply = vec![0u8; request.len()];
        self.socket
            .read_exact(&mut reply)
            .with_context(|| format!("no answer from {} to request {index}", self.target))?;
        if reply != request.as_bytes() {
            bail!("{} answered request {index} with other bytes", self.target);
        }
        Ok(())
    }

    /// Sends `line` as it is (a protocol's line, say) and waits for its echo.
    pub fn exchange_line(&mut self, line: &str) -> Result<()> {
        self.socket.write_all(line.as_bytes())?;
        let mut reply = vec![0u8; line.len()];
        self.socket
            .read_exact(&mut reply)
            .with_context(|| format!("no echo from {} of {line:?}", self.target))?;
        if reply != line.as_bytes() {
            bail!("{} echoed {line:?} with other bytes", self.target);
        }
        Ok(())
    }

    /// Closes the connection with a reset (`SO_LINGER` 0): nothing of it is
    /// sent afterwards, not even a request left unanswered (a test that
    /// counts packets next would count its retransmissions).
    pub fn abort(self) -> Result<()> {
        use std::os::fd::AsRawFd as _;
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on a socket this session owns, with a value of
        // the size it says.
        let set = unsafe {
            libc::setsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        if set != 0 {
            bail!(
                "SO_LINGER on the connection to {}: {}",
                self.target,
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// The client's address (its source port names the connection).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    /// Waits up to `timeout` for the echo of a request sent earlier.
    pub fn set_timeout(&self, timeout: Duration) -> Result<()> {
        Ok(self.socket.set_read_timeout(Some(timeout))?)
    }
}

/// `count` UDP requests (IPv4 or IPv6, as `target` is) from one socket in
/// `client_ns` to `target`, each
/// waited for; returns how many were answered by `target` itself (the
/// socket is connected: a reply from any other address is not received).
pub fn udp_echo(
    client_ns: &str,
    target: SocketAddr,
    count: usize,
    timeout: Duration,
) -> Result<usize> {
    let socket = netns::in_netns(client_ns, || {
        let any: IpAddr = if target.is_ipv6() {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        let socket = UdpSocket::bind((any, 0))?;
        socket.connect(target)?;
        socket.set_read_timeout(Some(timeout))?;
        Ok(socket)
    })?;
    let mut answered = 0;
    let mut buffer = [0u8; 64];
    for index in 0..count {
        let request = format!("query {index:06}");
        socket.send(request.as_bytes())?;
        if let Ok(len) = socket.recv(&mut buffer)
            && &buffer[..len] == request.as_bytes()
        {
            answered += 1;
        }
    }
    Ok(answered)
}
