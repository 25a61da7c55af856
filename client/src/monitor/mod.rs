//! `distcc-rs monitor`: the farm at work, live in a terminal.
//!
//! * [`model`]: what the monitor knows, built from successive status
//!   snapshots (pure).
//! * [`view`]: drawing the model with ratatui (pure, tested on a buffer).
//! * [`simulation`]: a seeded simulated farm for `--simulate` (pure).
//! * [`app`]: the terminal loop and the poller that feeds it (IO).

pub mod app;
pub mod model;
pub mod simulation;
pub mod view;

pub use app::{MonitorError, Source, run};
