//! The monitor's IO: a poller thread that feeds status snapshots into a
//! channel, and the terminal loop that turns them into the model, draws
//! it, and reads keys.
//!
//! The poller keeps one QUIC connection to the scheduler open and asks for
//! the status every [`POLL_INTERVAL`] on a new stream. When a request fails
//! the connection is dropped and made again with a back-off, and the screen
//! says the scheduler is unreachable until it answers again: a monitor is
//! most useful exactly when the farm is in trouble, so it never exits on
//! its own.

use std::io::{self, IsTerminal};
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use distcc_rs_proto::message::FarmStatus;
use ratatui::DefaultTerminal;

use super::model::Model;
use super::simulation::Simulation;
use super::view::{self, ViewState};
use crate::config::ClientConfig;
use crate::membership::{Membership, MembershipError};
use crate::status::StatusConnection;

/// How often the scheduler is asked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// The first wait after a failed request; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long the terminal loop waits for a key before it looks for news.
const KEY_WAIT: Duration = Duration::from_millis(100);
/// How often the screen is redrawn without news, so that ages count on.
const REDRAW_INTERVAL: Duration = Duration::from_secs(1);
/// How much simulated history the first screen of `--simulate` shows.
const SIMULATION_WARM_UP: Duration = Duration::from_secs(45);

/// What the monitor watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The scheduler at this address.
    Scheduler(SocketAddr),
    /// A simulated farm from this seed, with no network at all.
    Simulated { seed: u64 },
}

/// Why the monitor stopped other than by the person's wish.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error(
        "distcc-rs monitor needs a terminal; for scripts use `distcc-rs status` or `status --json`"
    )]
    NotATerminal,
    #[error("terminal error: {0}")]
    Terminal(#[from] io::Error),
    #[error("cannot start the status poller: {0}")]
    Poller(io::Error),
    #[error("the status poller stopped")]
    PollerStopped,
}

/// News from the poller.
#[derive(Debug)]
enum Update {
    Status {
        at: Duration,
        status: Box<FarmStatus>,
    },
    Unreachable {
        at: Duration,
        reason: String,
    },
}

/// The monitor's clock: time since it started, plus an offset for the
/// simulated history that precedes the first screen.
#[derive(Debug, Clone, Copy)]
struct Clock {
    start: Instant,
    offset: Duration,
}

impl Clock {
    fn now(self) -> Duration {
        self.offset + self.start.elapsed()
    }
}

/// Runs the monitor until the person quits.
pub fn run(source: Source) -> Result<(), MonitorError> {
    if !io::stdout().is_terminal() {
        return Err(MonitorError::NotATerminal);
    }
    let (tx, rx) = mpsc::channel();
    let (label, clock) = match source {
        Source::Scheduler(addr) => (
            format!("scheduler {addr}"),
            Clock {
                start: Instant::now(),
                offset: Duration::ZERO,
            },
        ),
        Source::Simulated { seed } => (
            format!("simulated farm (seed {seed})"),
            Clock {
                start: Instant::now(),
                offset: SIMULATION_WARM_UP,
            },
        ),
    };
    // The poller is never joined: it ends when its next send finds the
    // channel closed, or with the process, whichever comes first. A join
    // could wait for a connection attempt to time out.
    std::thread::Builder::new()
        .name("status-poller".into())
        .spawn(move || match source {
            Source::Scheduler(addr) => poll_scheduler(addr, clock, &tx),
            Source::Simulated { seed } => simulate(seed, clock, &tx),
        })
        .map_err(MonitorError::Poller)?;
    let mut terminal = ratatui::try_init()?;
    let result = event_loop(&mut terminal, &rx, Model::new(label), clock);
    // The terminal is restored even when the loop failed, or the shell
    // would be left in raw mode on the alternate screen.
    let restored = ratatui::try_restore();
    result?;
    restored.map_err(MonitorError::Terminal)
}

fn event_loop(
    terminal: &mut DefaultTerminal,
    rx: &Receiver<Update>,
    mut model: Model,
    clock: Clock,
) -> Result<(), MonitorError> {
    let mut view = ViewState::default();
    let mut dirty = true;
    let mut last_draw = Instant::now();
    loop {
        loop {
            match rx.try_recv() {
                Ok(Update::Status { at, status }) => model.observe(at, &status),
                Ok(Update::Unreachable { at, reason }) => model.unreachable(at, reason),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Err(MonitorError::PollerStopped),
            }
            dirty = true;
        }
        if dirty || last_draw.elapsed() >= REDRAW_INTERVAL {
            model.tick(clock.now());
            terminal.draw(|frame| view::draw(frame, &model, &view))?;
            last_draw = Instant::now();
            dirty = false;
        }
        if !event::poll(KEY_WAIT)? {
            continue;
        }
        match event::read()? {
            Event::Key(key) if key.kind == KeyEventKind::Press => {
                let rows = view::job_rows(&model);
                let page = terminal.size()?.height.saturating_sub(4) as isize / 2;
                match key.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    // Raw mode turns Ctrl-C into a key rather than a signal.
                    KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                        return Ok(());
                    }
                    KeyCode::Up | KeyCode::Char('k') => view.scroll_by(-1, rows),
                    KeyCode::Down | KeyCode::Char('j') => view.scroll_by(1, rows),
                    KeyCode::PageUp => view.scroll_by(-page, rows),
                    KeyCode::PageDown => view.scroll_by(page, rows),
                    KeyCode::Home => view.scroll = 0,
                    KeyCode::End => view.scroll_by(isize::MAX, rows),
                    _ => {}
                }
                dirty = true;
            }
            Event::Resize(..) => dirty = true,
            _ => {}
        }
    }
}

/// Asks the scheduler for its status every [`POLL_INTERVAL`] over one kept
/// connection, reconnecting with a back-off, until the monitor goes away.
fn poll_scheduler(addr: SocketAddr, clock: Clock, tx: &Sender<Update>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = tx.send(Update::Unreachable {
                at: clock.now(),
                reason: format!("cannot start the async runtime: {e}"),
            });
            return;
        }
    };
    runtime.block_on(async {
        let mut conn: Option<StatusConnection> = None;
        let mut backoff = BACKOFF_MIN;
        loop {
            let started = tokio::time::Instant::now();
            let answer = match &conn {
                Some(c) => c.fetch().await.map_err(|e| e.to_string()),
                None => match open(addr).await {
                    Ok(c) => conn.insert(c).fetch().await.map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                },
            };
            let update = match answer {
                Ok(status) => {
                    backoff = BACKOFF_MIN;
                    Update::Status {
                        at: clock.now(),
                        status: Box::new(status),
                    }
                }
                Err(e) => {
                    // A fresh connection next time: this one may be dead
                    // (a restarted scheduler does not know it).
                    conn = None;
                    Update::Unreachable {
                        at: clock.now(),
                        reason: e,
                    }
                }
            };
            let failed = matches!(update, Update::Unreachable { .. });
            if tx.send(update).is_err() {
                break;
            }
            if failed {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            } else {
                tokio::time::sleep_until(started + POLL_INTERVAL).await;
            }
        }
        if let Some(c) = conn {
            c.close().await;
        }
    });
}

/// Connects to the scheduler with the client's credentials, read (or
/// enrolled for) anew on each attempt, so that a `distcc-rs join` in another
/// terminal takes effect without restarting the monitor. Without
/// credentials, the error says how to get them, and the screen shows it.
async fn open(addr: SocketAddr) -> Result<StatusConnection, String> {
    let config = ClientConfig::from_env();
    let credentials = async { Membership::from_config(&config)?.load_or_enroll(addr).await }
        .await
        .map_err(|e: MembershipError| e.to_string())?;
    StatusConnection::open(addr, &credentials)
        .await
        .map_err(|e| e.to_string())
}

/// Feeds snapshots of a simulated farm: a stretch of history at once, so
/// the first screen is already busy, then one snapshot per poll interval.
fn simulate(seed: u64, clock: Clock, tx: &Sender<Update>) {
    let step_ms = POLL_INTERVAL.as_millis() as u64;
    let mut sim = Simulation::new(seed);
    let mut at = Duration::ZERO;
    while at < clock.offset {
        at += POLL_INTERVAL;
        let status = Box::new(sim.step(step_ms));
        if tx.send(Update::Status { at, status }).is_err() {
            return;
        }
    }
    loop {
        std::thread::sleep(POLL_INTERVAL);
        let status = Box::new(sim.step(step_ms));
        if tx
            .send(Update::Status {
                at: clock.now(),
                status,
            })
            .is_err()
        {
            return;
        }
    }
}
