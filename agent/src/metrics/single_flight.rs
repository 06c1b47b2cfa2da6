//! One rendering of the metrics at a time, shared by every scrape that
//! arrives meanwhile or shortly after: however many scrapers connect, the
//! pinned maps are read at most once per [`RECENT`] plus one rendering's
//! time, on one blocking thread.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use tokio::sync::Mutex as AsyncMutex;

/// A rendering this young answers scrapes without a new one (Prometheus
/// scrapes every 15 s or more; two replicas scraping together share one).
pub const RECENT: Duration = Duration::from_secs(1);

/// How a scrape was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// By a rendering it started (the only one running).
    Computed,
    /// By the last rendering, under [`RECENT`] old.
    Recent,
    /// By the last rendering, while another scrape's rendering ran.
    InFlight,
}

impl Served {
    pub const ALL: [Served; 3] = [Served::Computed, Served::Recent, Served::InFlight];

    /// The label value `weft_metrics_scrapes_total` counts it under.
    pub fn label(self) -> &'static str {
        match self {
            Served::Computed => "computed",
            Served::Recent => "recent",
            Served::InFlight => "in_flight",
        }
    }
}

struct Rendered {
    text: Arc<str>,
    at: Instant,
}

/// Renders with `render` (blocking: it reads the pinned maps) at most once
/// at a time, and shares the result.
pub struct SingleFlight {
    render: Arc<dyn Fn() -> String + Send + Sync>,
    recent: Duration,
    last: Arc<Mutex<Option<Rendered>>>,
    /// Held by the blocking task that renders, not by the scrape that
    /// started it: a scraper that hangs up mid-rendering cannot let a
    /// second rendering start beside the first.
    rendering: Arc<AsyncMutex<()>>,
}

impl SingleFlight {
    pub fn new(recent: Duration, render: impl Fn() -> String + Send + Sync + 'static) -> Self {
        Self {
            render: Arc::new(render),
            recent,
            last: Arc::default(),
            rendering: Arc::default(),
        }
    }

    /// The metrics text for one scrape, and how it was had. Errs only if
    /// the rendering panicked.
    pub async fn get(&self) -> Result<(Arc<str>, Served), tokio::task::JoinError> {
        if let Some(text) = self.last_within(self.recent) {
            return Ok((text, Served::Recent));
        }
        let guard = match self.rendering.clone().try_lock_owned() {
            Ok(guard) => guard,
            Err(_) => match self.last_within(Duration::MAX) {
                Some(text) => return Ok((text, Served::InFlight)),
                // The first rendering is still running: wait for it.
                None => {
                    let guard = self.rendering.clone().lock_owned().await;
                    if let Some(text) = self.last_within(self.recent) {
                        return Ok((text, Served::InFlight));
                    }
                    guard
                }
            },
        };
        // Another scrape may have finished rendering just before we locked.
        if let Some(text) = self.last_within(self.recent) {
            return Ok((text, Served::Recent));
        }
        let render = self.render.clone();
        let last = self.last.clone();
        let text = tokio::task::spawn_blocking(move || {
            let _rendering = guard;
            let text: Arc<str> = render().into();
            *last.lock().unwrap_or_else(PoisonError::into_inner) = Some(Rendered {
                text: text.clone(),
                at: Instant::now(),
            });
            text
        })
        .await?;
        Ok((text, Served::Computed))
    }

    /// The last rendering if it is at most `age` old.
    fn last_within(&self, age: Duration) -> Option<Arc<str>> {
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let last = last.as_ref()?;
        (last.at.elapsed() <= age).then(|| last.text.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc,
    };

    use super::*;

    /// A renderer that counts its calls and the most that ran at once, and
    /// blocks each call until the test sends it a go.
    struct Gate {
        calls: AtomicUsize,
        running: AtomicUsize,
        most_at_once: AtomicUsize,
        go: Mutex<mpsc::Receiver<()>>,
    }

    fn gated(recent: Duration) -> (Arc<SingleFlight>, Arc<Gate>, mpsc::Sender<()>) {
        let (send, receive) = mpsc::channel();
        let gate = Arc::new(Gate {
            calls: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            most_at_once: AtomicUsize::new(0),
            go: Mutex::new(receive),
        });
        let render = {
            let gate = gate.clone();
            move || {
                let call = gate.calls.fetch_add(1, Ordering::SeqCst) + 1;
                let running = gate.running.fetch_add(1, Ordering::SeqCst) + 1;
                gate.most_at_once.fetch_max(running, Ordering::SeqCst);
                gate.go.lock().unwrap().recv().unwrap();
                gate.running.fetch_sub(1, Ordering::SeqCst);
                format!("rendering {call}\n")
            }
        };
        (Arc::new(SingleFlight::new(recent, render)), gate, send)
    }

    #[tokio::test]
    async fn scrapes_during_a_rendering_share_the_last_one() {
        let (flight, gate, go) = gated(Duration::ZERO);
        go.send(()).unwrap();
        assert_eq!(
            flight.get().await.unwrap(),
            ("rendering 1\n".into(), Served::Computed)
        );
        // The second rendering waits for its go; 49 scrapes meanwhile get
        // the first one's text.
        let second = tokio::spawn({
            let flight = flight.clone();
            async move { flight.get().await.unwrap() }
        });
        while gate.calls.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        for _ in 0..49 {
            assert_eq!(
                flight.get().await.unwrap(),
                ("rendering 1\n".into(), Served::InFlight)
            );
        }
        go.send(()).unwrap();
        assert_eq!(
            second.await.unwrap(),
            ("rendering 2\n".into(), Served::Computed)
        );
        assert_eq!(gate.calls.load(Ordering::SeqCst), 2);
        assert_eq!(gate.most_at_once.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_scraper_hanging_up_does_not_start_a_second_rendering() {
        let (flight, gate, go) = gated(Duration::ZERO);
        go.send(()).unwrap();
        flight.get().await.unwrap();
        let abandoned = tokio::spawn({
            let flight = flight.clone();
            async move { flight.get().await }
        });
        while gate.calls.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        abandoned.abort();
        assert!(abandoned.await.unwrap_err().is_cancelled());
        // The abandoned rendering still runs: the next scrape shares.
        assert_eq!(
            flight.get().await.unwrap().1,
            Served::InFlight,
            "a second rendering started beside the abandoned one"
        );
        go.send(()).unwrap();
        while flight.rendering.try_lock().is_err() {
            tokio::task::yield_now().await;
        }
        go.send(()).unwrap();
        // Its result is kept: with RECENT zero, the next scrape renders anew.
        assert_eq!(
            flight.get().await.unwrap(),
            ("rendering 3\n".into(), Served::Computed)
        );
        assert_eq!(gate.most_at_once.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_recent_rendering_answers_without_a_new_one() {
        let (flight, gate, go) = gated(Duration::from_secs(3600));
        go.send(()).unwrap();
        assert_eq!(flight.get().await.unwrap().1, Served::Computed);
        assert_eq!(flight.get().await.unwrap().1, Served::Recent);
        assert_eq!(gate.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_first_scrapes_wait_for_the_first_rendering() {
        let (flight, gate, go) = gated(Duration::from_secs(3600));
        let first = tokio::spawn({
            let flight = flight.clone();
            async move { flight.get().await.unwrap() }
        });
        while gate.calls.load(Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
        let waiting = tokio::spawn({
            let flight = flight.clone();
            async move { flight.get().await.unwrap() }
        });
        tokio::task::yield_now().await;
        go.send(()).unwrap();
        assert_eq!(first.await.unwrap().1, Served::Computed);
        let (text, served) = waiting.await.unwrap();
        assert_eq!(&*text, "rendering 1\n");
        assert_ne!(served, Served::Computed);
        assert_eq!(gate.calls.load(Ordering::SeqCst), 1);
    }
}
