//! Load on an agent's `/metrics`: `FLOWS` filled with synthetic verdicts,
//! and many scrapers at once while `/healthz` is asked in a loop (the test
//! in tests/metrics.rs and the bench's scrape-load section share this).

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    sync::{
        Barrier,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::maps::{HashMap, Map, MapData};
use weft_common::{FlowKey, FlowVerdict, map_names};

use crate::netns;

/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes `count` verdicts into the agent's pinned `FLOWS` in `pin_dir`, as
/// `tc_verdict` would for that many flows. Their addresses are in
/// 198.18.0.0/15 (benchmarking), which no lab pod uses, so they match no
/// real traffic; their generation is 0, which no ruleset has.
pub fn fill_flows(pin_dir: &Path, count: u32) -> Result<()> {
    let path = pin_dir.join(map_names::FLOWS);
    let data =
        MapData::from_pin(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut flows: HashMap<_, FlowKey, FlowVerdict> = HashMap::try_from(Map::LruHashMap(data))?;
    for index in 0..count {
        let [_, high, low, last] = index.to_be_bytes();
        let key = FlowKey {
            saddr: [198, 18, 0, 1],
            daddr: [198, 18 | (high & 1), low, last],
            sport: [0x30, 0x39],
            dport: [0, 80],
            proto: libc::IPPROTO_TCP as u8,
            icmp_type: 0,
            icmp_code: 0,
            _pad: 0,
        };
        flows
            .insert(key, FlowVerdict::default(), 0)
            .with_context(|| format!("cannot write verdict {index} into FLOWS"))?;
    }
    Ok(())
}

/// The entries of the pinned `FLOWS`, walked key by key (the reference the
/// agent's batched count is checked against).
pub fn flows_walked(pin_dir: &Path) -> Result<u64> {
    let path = pin_dir.join(map_names::FLOWS);
    let data =
        MapData::from_pin(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let flows: HashMap<_, FlowKey, FlowVerdict> = HashMap::try_from(Map::LruHashMap(data))?;
    Ok(flows.keys().filter(Result::is_ok).count() as u64)
}

/// One answered request: its status line, body and time to the last byte.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: String,
    pub content_type: Option<String>,
    pub body: String,
    pub took: Duration,
}

/// `GET path` on 127.0.0.1:`port` from the calling thread's namespace.
pub fn get(port: u16, path: &str) -> Result<Response> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("cannot connect to 127.0.0.1:{port}"))?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .with_context(|| format!("GET {path}: no complete answer"))?;
    let took = started.elapsed();
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        bail!("GET {path}: not an HTTP response: {response:?}");
    };
    let mut head = head.lines();
    let status = head.next().unwrap_or_default().to_owned();
    let content_type = head.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-type")
            .then(|| value.trim().to_owned())
    });
    Ok(Response {
        status,
        content_type,
        body: body.to_owned(),
        took,
    })
}

/// Waits until the agent's last rendering of the metrics is too old to be
/// shared (`single_flight::RECENT`): the next scrape renders anew, unless
/// another scraper got there first.
pub fn wait_until_stale() {
    std::thread::sleep(weft_agent::metrics::single_flight::RECENT + Duration::from_millis(200));
}

/// What a storm of scrapes got back.
#[derive(Debug)]
pub struct Storm {
    /// Every scrape's answer (or why it had none), `scrapers` × `rounds`.
    pub scrapes: Vec<Result<Response>>,
    /// Every `/healthz` asked while the scrapes ran, one after another.
    pub healthz: Vec<Result<Response>>,
}

/// `scrapers` threads in `ns` each `GET /metrics` `rounds` times, released
/// together, while one more thread asks `/healthz` until they are done.
pub fn storm(ns: &str, port: u16, scrapers: usize, rounds: usize) -> Result<Storm> {
    ensure!(
        scrapers > 0 && rounds > 0,
        "a storm needs scrapers and rounds"
    );
    netns::in_netns(ns, || {
        let start = Barrier::new(scrapers + 1);
        let done = AtomicBool::new(false);
        Ok(std::thread::scope(|scope| {
            // Threads inherit the namespace of the thread that makes them.
            let healthz = scope.spawn(|| {
                let mut answers = Vec::new();
                start.wait();
                while !done.load(Ordering::SeqCst) {
                    answers.push(get(port, "/healthz"));
                }
                answers
            });
            let workers: Vec<_> = (0..scrapers)
                .map(|_| {
                    scope.spawn(|| {
                        start.wait();
                        (0..rounds)
                            .map(|_| get(port, "/metrics"))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let scrapes: Vec<Result<Response>> = workers
                .into_iter()
                .flat_map(|worker| worker.join().expect("a scraper panicked"))
                .collect();
            done.store(true, Ordering::SeqCst);
            let healthz = healthz.join().expect("the /healthz thread panicked");
            Storm { scrapes, healthz }
        }))
    })
}

/// The value of the sample line `name_and_labels` (as the exposition
/// writes it, e.g. `weft_metrics_scrapes_total{served="computed"}`).
pub fn sample(body: &str, name_and_labels: &str) -> Option<f64> {
    body.lines().find_map(|line| {
        let value = line.strip_prefix(name_and_labels)?.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}
