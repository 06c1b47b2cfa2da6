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
    time::{Duration, Instant},
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

/// What became of the queries [`udp_echo`] sent.
#[derive(Debug, Default)]
pub struct UdpEchoOutcome {
    /// How many queries were sent.
    pub sent: usize,
    /// The queries with no answer within the timeout.
    pub unanswered: Vec<usize>,
    /// Those of them answered later (read while a later query was waited
    /// for, or in one more timeout after the last query).
    pub late: Vec<usize>,
    /// The queries answered twice: a copy of a datagram reached the client
    /// (or the server) twice.
    pub duplicated: Vec<usize>,
}

impl UdpEchoOutcome {
    /// The queries never answered, not even late.
    pub fn lost(&self) -> Vec<usize> {
        self.unanswered
            .iter()
            .copied()
            .filter(|query| !self.late.contains(query))
            .collect()
    }

    /// Every query answered once by the target, in time or late.
    pub fn every_query_answered_once(&self) -> bool {
        self.lost().is_empty() && self.duplicated.is_empty()
    }

    fn record_earlier(&mut self, query: usize) {
        if self.unanswered.contains(&query) && !self.late.contains(&query) {
            self.late.push(query);
        } else {
            self.duplicated.push(query);
        }
    }
}

impl std::fmt::Display for UdpEchoOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let in_time = self.sent - self.unanswered.len();
        write!(f, "{in_time} of {} answered in time", self.sent)?;
        let lost = self.lost();
        if !lost.is_empty() {
            write!(f, "; never answered: queries {lost:?}")?;
        }
        if !self.late.is_empty() {
            write!(f, "; answered late: queries {:?}", self.late)?;
        }
        if !self.duplicated.is_empty() {
            write!(f, "; answered twice: queries {:?}", self.duplicated)?;
        }
        Ok(())
    }
}

/// `count` UDP queries (IPv4 or IPv6, as `target` is) from one socket in
/// `client_ns` to `target`, each waited for up to `timeout`. Only answers
/// from `target` itself count (the socket is connected: a reply from any
/// other address is not received). An answer that comes after its query's
/// timeout is recorded as late, a second answer as duplicated, and neither
/// is taken for the answer to the query being waited for (one slow answer
/// would otherwise make every later query read its predecessor's). After
/// the last query, answers to unanswered ones are waited for one more
/// `timeout`.
pub fn udp_echo(
    client_ns: &str,
    target: SocketAddr,
    count: usize,
    timeout: Duration,
) -> Result<UdpEchoOutcome> {
    let socket = netns::in_netns(client_ns, || {
        let any: IpAddr = if target.is_ipv6() {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        let socket = UdpSocket::bind((any, 0))?;
        socket.connect(target)?;
        Ok(socket)
    })?;
    let mut outcome = UdpEchoOutcome {
        sent: count,
        ..UdpEchoOutcome::default()
    };
    for query in 0..count {
        socket.send(format!("query {query:06}").as_bytes())?;
        let deadline = Instant::now() + timeout;
        loop {
            match answer_before(&socket, deadline)? {
                None => {
                    outcome.unanswered.push(query);
                    break;
                }
                Some(answer) if answer == query => break,
                Some(earlier) => outcome.record_earlier(earlier),
            }
        }
    }
    // Only an unanswered query can still be answered late.
    if !outcome.unanswered.is_empty() {
        let deadline = Instant::now() + timeout;
        while let Some(earlier) = answer_before(&socket, deadline)? {
            outcome.record_earlier(earlier);
        }
    }
    Ok(outcome)
}

/// The query number of the next answer `socket` receives before
/// `deadline` (anything else received is skipped); `None` once the
/// deadline passes or the socket reports an error (an ICMP error for the
/// connected socket, say).
fn answer_before(socket: &UdpSocket, deadline: Instant) -> Result<Option<usize>> {
    let mut buffer = [0u8; 64];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        socket.set_read_timeout(Some(left))?;
        let Ok(len) = socket.recv(&mut buffer) else {
            return Ok(None);
        };
        if let Some(query) = std::str::from_utf8(&buffer[..len])
            .ok()
            .and_then(|answer| answer.strip_prefix("query "))
            .and_then(|query| query.parse::<usize>().ok())
        {
            return Ok(Some(query));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::UdpEchoOutcome;

    /// Queries 0-4 sent; what each answer read while waiting makes of them.
    fn outcome(unanswered: &[usize], earlier_answers: &[usize]) -> UdpEchoOutcome {
        let mut outcome = UdpEchoOutcome {
            sent: 5,
            unanswered: unanswered.to_vec(),
            ..UdpEchoOutcome::default()
        };
        for &query in earlier_answers {
            outcome.record_earlier(query);
        }
        outcome
    }

    #[test]
    fn a_late_answer_counts_and_is_reported() {
        let late = outcome(&[2], &[2]);
        assert!(late.every_query_answered_once());
        assert_eq!(
            late.to_string(),
            "4 of 5 answered in time; answered late: queries [2]"
        );
    }

    #[test]
    fn a_lost_or_twice_answered_query_fails() {
        let lost = outcome(&[1, 3], &[3]);
        assert!(!lost.every_query_answered_once());
        assert_eq!(lost.lost(), vec![1]);
        assert_eq!(
            lost.to_string(),
            "3 of 5 answered in time; never answered: queries [1]; answered late: queries [3]"
        );
        // Answered in time, then again; and a late answer that came twice.
        for twice in [outcome(&[], &[0]), outcome(&[4], &[4, 4])] {
            assert!(!twice.every_query_answered_once(), "{twice}");
            assert!(twice.to_string().contains("answered twice"), "{twice}");
        }
    }
}
