//! Drawing the monitor: a pure function of the [`Model`] and the
//! [`ViewState`] (what the person scrolled to) onto a ratatui frame.
//!
//! From top to bottom: a header (what is watched, and whether it answers),
//! a summary line, one row per node with a bar of its slots coloured by
//! client, a sparkline of jobs ended per status poll, the job list (jobs in
//! flight, then ended jobs, the latest first), and a footer with the client
//! colours, the keys and the latest farm events.

use std::time::Duration;

use distcc_rs_proto::JobId;
use distcc_rs_proto::message::{JobOutcome, JobPhase};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Sparkline, Table};

use super::model::{EndReport, EndedJob, JobEnd, Link, LiveJob, Model, NodeEntry, client_host};
use crate::events::human_bytes;
use crate::status::{LoadCells, phase, seconds};

/// Client colours, in the order clients appear. Red is left out: it means
/// trouble on this screen.
const PALETTE: &[Color] = &[
    Color::Cyan,
    Color::Magenta,
    Color::Yellow,
    Color::Green,
    Color::Blue,
    Color::LightRed,
    Color::LightCyan,
    Color::LightMagenta,
    Color::LightGreen,
    Color::LightYellow,
];

/// A node with more slots than this gets one column per slot instead of two.
const WIDE_SLOTS: u32 = 16;
/// The widest a slot bar gets; nodes with more slots share columns.
const MAX_BAR: u32 = 48;
/// How long a farm event stays in the footer.
const EVENT_SHOWN: Duration = Duration::from_secs(30);

/// What the person chose: how far the job list is scrolled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ViewState {
    /// Rows of the job list scrolled past.
    pub scroll: usize,
}

impl ViewState {
    /// Scrolls the job list by `delta` rows, staying within its `rows`.
    pub fn scroll_by(&mut self, delta: isize, rows: usize) {
        let max = rows.saturating_sub(1);
        self.scroll = self.scroll.saturating_add_signed(delta).min(max);
    }
}

/// How many rows the job list has.
pub fn job_rows(model: &Model) -> usize {
    model.jobs.len() + model.ended.len()
}

/// The colour of a client's jobs.
pub fn client_colour(model: &Model, client: &str) -> Color {
    model
        .clients
        .get(client)
        .map_or(Color::Gray, |i| PALETTE[i % PALETTE.len()])
}

/// Draws the whole screen.
pub fn draw(frame: &mut Frame<'_>, model: &Model, view: &ViewState) {
    let area = frame.area();
    let node_rows = model.nodes.len().max(1) as u16 + 2;
    // The nodes get what they need, but leave the job list room for a few
    // rows on a small terminal.
    let node_height = node_rows.min(area.height.saturating_sub(14).max(3));
    let [header, summary, nodes, throughput, jobs, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(node_height),
        Constraint::Length(5),
        Constraint::Min(4),
        Constraint::Length(2),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(header_line(model)), header);
    frame.render_widget(Paragraph::new(summary_line(model)), summary);
    draw_nodes(frame, model, nodes);
    draw_throughput(frame, model, throughput);
    draw_jobs(frame, model, view, jobs);
    frame.render_widget(Paragraph::new(footer_lines(model)), footer);
}

fn header_line(model: &Model) -> Line<'static> {
    let mut spans = vec![
        Span::styled(
            " distcc-rs monitor ",
            Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED),
        ),
        Span::raw(format!(
            "  farm {}  ·  {}  ·  ",
            model.farm.as_deref().unwrap_or("?"),
            model.source
        )),
    ];
    spans.push(match &model.link {
        Link::Connecting => Span::styled("connecting…", Style::new().fg(Color::Yellow)),
        Link::Connected => Span::styled("● connected", Style::new().fg(Color::Green)),
        Link::Unreachable { since, reason } => Span::styled(
            format!(
                "✖ scheduler unreachable for {}s, retrying: {reason}",
                model.now.saturating_sub(*since).as_secs()
            ),
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        ),
    });
    Line::from(spans)
}

fn summary_line(model: &Model) -> Line<'static> {
    let present = model.nodes.iter().filter(|n| n.left.is_none()).count();
    let left = model.nodes.len() - present;
    let (busy, slots) = model.slots();
    let mut text = format!(" {present} nodes");
    if left > 0 {
        text.push_str(&format!(" ({left} just left)"));
    }
    text.push_str(&format!(
        " · {busy}/{slots} slots busy · {} in flight · {} waiting for a slot",
        count(model.jobs.len(), "job", "jobs"),
        count(model.waiting as usize, "request", "requests"),
    ));
    Line::from(text)
}

fn draw_nodes(frame: &mut Frame<'_>, model: &Model, area: Rect) {
    let block = Block::bordered().title(" Nodes: slots by client (█ running, ▒ assigned, · free) ");
    let name_width = model
        .nodes
        .iter()
        .map(|n| n.status.name.chars().count())
        .max()
        .unwrap_or(0)
        .min(24);
    let bar_width = model
        .nodes
        .iter()
        .filter(|n| n.left.is_none())
        .map(|n| bar_cells(n.status.slots).0 * bar_cells(n.status.slots).1)
        .max()
        .unwrap_or(0) as usize;
    let lines: Vec<Line<'_>> = if model.nodes.is_empty() {
        vec![Line::styled(
            "no nodes in the farm",
            Style::new().fg(Color::DarkGray),
        )]
    } else {
        model
            .nodes
            .iter()
            .map(|n| node_line(model, n, name_width, bar_width))
            .collect()
    };
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

/// How a node's slots are drawn: `(cells, columns per cell)`.
fn bar_cells(slots: u32) -> (u32, u32) {
    match slots {
        0..=WIDE_SLOTS => (slots, 2),
        _ => (slots.min(MAX_BAR), 1),
    }
}

fn node_line<'a>(
    model: &'a Model,
    node: &'a NodeEntry,
    name_width: usize,
    bar_width: usize,
) -> Line<'a> {
    let s = &node.status;
    let name = format!("{:<name_width$}", truncate(&s.name, name_width));
    if let Some(left) = node.left {
        let gone = model.now.saturating_sub(left).as_secs();
        return Line::styled(
            format!("{name}  left {gone}s ago"),
            Style::new().fg(Color::DarkGray),
        );
    }
    let jobs = model.jobs_on(s.node);
    let mut spans = vec![Span::styled(
        name,
        Style::new().add_modifier(Modifier::BOLD),
    )];
    spans.push(Span::raw(" "));
    let (cells, columns) = bar_cells(s.slots);
    for cell in 0..cells {
        // With more slots than cells, each cell stands for a run of slots
        // and shows the first of them; busy slots come first.
        let slot = (cell * s.slots / cells.max(1)) as usize;
        let width = columns as usize;
        spans.push(match jobs.get(slot) {
            Some(job) => {
                let symbol = if job.phase == JobPhase::Running {
                    "█"
                } else {
                    "▒"
                };
                Span::styled(
                    symbol.repeat(width),
                    Style::new().fg(client_colour(model, &job.client)),
                )
            }
            None => Span::styled("·".repeat(width), Style::new().fg(Color::DarkGray)),
        });
    }
    let drawn = (cells * columns) as usize;
    spans.push(Span::raw(" ".repeat(bar_width.saturating_sub(drawn))));
    let load = LoadCells::of(s.load.as_ref());
    spans.push(Span::raw(format!(
        " {:>5}  cpu {:>4}  load {:>8}  mem {:>9}  speed {:.2}  done {:>4}",
        format!("{}/{}", jobs.len(), s.slots),
        load.cpu,
        load.load,
        load.mem,
        s.speed,
        s.jobs_done,
    )));
    if s.jobs_failed > 0 {
        spans.push(Span::styled(
            format!("  failed {}", s.jobs_failed),
            Style::new().fg(Color::Red),
        ));
    }
    for (i, job) in jobs.iter().enumerate() {
        spans.push(Span::raw(if i == 0 { "  " } else { " " }));
        spans.push(Span::styled(
            job.crate_name.as_str(),
            Style::new().fg(client_colour(model, &job.client)),
        ));
    }
    Line::from(spans)
}

fn draw_throughput(frame: &mut Frame<'_>, model: &Model, area: Rect) {
    let inner = area.width.saturating_sub(2) as usize;
    let data: Vec<u64> = model.samples.iter().map(|s| s.ended).collect();
    let shown = &data[data.len().saturating_sub(inner)..];
    let t = &model.totals;
    let title = format!(
        " Throughput {:.1} jobs/s (last {} s) · scheduler totals: {} ok, {}, {} \
         failed, {} run locally ",
        model.rate(),
        super::model::RATE_WINDOW.as_secs(),
        t.succeeded,
        count(t.compile_errors as usize, "compile error", "compile errors"),
        t.failed,
        t.run_locally,
    );
    let sparkline = Sparkline::default()
        .block(Block::bordered().title(title))
        .data(shown.iter().copied())
        .style(Style::new().fg(Color::Green));
    frame.render_widget(sparkline, area);
}

fn draw_jobs(frame: &mut Frame<'_>, model: &Model, view: &ViewState, area: Rect) {
    let total = job_rows(model);
    let visible = area.height.saturating_sub(3) as usize;
    let scroll = view.scroll.min(total.saturating_sub(1));
    let mut live: Vec<&LiveJob> = model.jobs.iter().collect();
    live.sort_by(|a, b| b.elapsed_ms.cmp(&a.elapsed_ms).then(a.job.cmp(&b.job)));
    // Each column as wide as the widest of its cells on screen, so that
    // full job ids (they start at a random base) and long crate names fit.
    let cells: Vec<[String; 4]> = live
        .iter()
        .map(|j| texts(j.job, &j.crate_name, &j.client, &j.node_name))
        .chain(
            model
                .ended
                .iter()
                .map(|j| texts(j.job, &j.crate_name, &j.client, &j.node_name)),
        )
        .skip(scroll)
        .take(visible)
        .collect();
    let width = |i: usize, header: &str, cap: usize| {
        cells
            .iter()
            .map(|c| c[i].chars().count())
            .chain([header.len()])
            .max()
            .unwrap_or(0)
            .min(cap) as u16
    };
    let widths = [
        Constraint::Length(width(0, "JOB", 21)),
        Constraint::Length(width(1, "CRATE", 32)),
        Constraint::Length(width(2, "CLIENT", 24)),
        Constraint::Length(width(3, "NODE", 24)),
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(10),
        Constraint::Length(10),
    ];
    let rows = live
        .into_iter()
        .map(|j| live_row(model, j))
        .chain(model.ended.iter().map(|j| ended_row(model, j)))
        .skip(scroll)
        .take(visible);
    let last = (scroll + visible).min(total);
    let title = format!(
        " Jobs: {} in flight, {} seen ending · rows {}–{last} of {total} · ↑↓ PgUp PgDn Home End ",
        model.jobs.len(),
        model.ended.len(),
        if total == 0 { 0 } else { scroll + 1 },
    );
    let header = Row::new([
        "JOB",
        "CRATE",
        "CLIENT",
        "NODE",
        "STATE",
        "   TIME",
        " SETUP",
        "        IN",
        "       OUT",
    ])
    .style(Style::new().add_modifier(Modifier::BOLD));
    let table = Table::new(rows, widths)
        .column_spacing(2)
        .header(header)
        .block(Block::bordered().title(title));
    frame.render_widget(table, area);
}

/// The text of a job row's first four cells.
fn texts(job: JobId, crate_name: &str, client: &str, node: &str) -> [String; 4] {
    [
        job.to_string(),
        crate_name.to_owned(),
        client_host(client).to_owned(),
        node.to_owned(),
    ]
}

fn live_row<'a>(model: &Model, j: &'a LiveJob) -> Row<'a> {
    let state_style = match j.phase {
        JobPhase::Running => Style::new().fg(Color::Green),
        JobPhase::Assigned => Style::new().fg(Color::Yellow),
    };
    Row::new([
        Cell::from(j.job.to_string()),
        Cell::from(j.crate_name.as_str()).style(Style::new().add_modifier(Modifier::BOLD)),
        Cell::from(client_host(&j.client)).style(Style::new().fg(client_colour(model, &j.client))),
        Cell::from(j.node_name.as_str()),
        Cell::from(phase(j.phase)).style(state_style),
        Cell::from(format!("{:>7}", seconds(j.elapsed_ms))),
        Cell::from(format!("{:>6}", setup(j.running_after_ms))),
        Cell::from(format!("{:>10}", "-")),
        Cell::from(format!("{:>10}", "-")),
    ])
}

fn ended_row<'a>(model: &Model, j: &'a EndedJob) -> Row<'a> {
    let (state, style) = match (j.end, j.report.as_ref().map(|r| &r.outcome)) {
        (JobEnd::NodeLeft, _) => ("node left", Style::new().fg(Color::Red)),
        (_, Some(JobOutcome::Compiled { exit_code: 0 })) => {
            ("done", Style::new().fg(Color::DarkGray))
        }
        (_, Some(JobOutcome::Compiled { .. })) => ("error", Style::new().fg(Color::Magenta)),
        (_, Some(JobOutcome::Failed(_))) => ("failed", Style::new().fg(Color::Red)),
        (JobEnd::Gone, None) => ("ended", Style::new().fg(Color::DarkGray)),
    };
    let bytes = |pick: fn(&EndReport) -> u64| {
        j.report
            .as_ref()
            .map_or_else(|| "-".to_owned(), |r| human_bytes(pick(r)))
    };
    Row::new([
        Cell::from(j.job.to_string()),
        Cell::from(j.crate_name.as_str()),
        Cell::from(client_host(&j.client)).style(Style::new().fg(client_colour(model, &j.client))),
        Cell::from(j.node_name.as_str()),
        Cell::from(state).style(style),
        Cell::from(format!("{:>7}", ended_time(j))),
        Cell::from(format!("{:>6}", setup(j.running_after_ms))),
        Cell::from(format!("{:>10}", bytes(|r| r.bytes_in))),
        Cell::from(format!("{:>10}", bytes(|r| r.bytes_out))),
    ])
}

/// An ended job's time: the middle of what the snapshots allow when they
/// came close together, else the least it took.
fn ended_time(j: &EndedJob) -> String {
    if j.max_ms - j.min_ms <= 1_000 {
        seconds((j.min_ms + j.max_ms) / 2)
    } else {
        format!("≥{}", seconds(j.min_ms))
    }
}

/// The time until the node was first seen running the job, an upper bound.
fn setup(running_after_ms: Option<u64>) -> String {
    running_after_ms.map_or_else(|| "-".to_owned(), |ms| format!("≤{}", seconds(ms)))
}

fn footer_lines(model: &Model) -> Vec<Line<'_>> {
    let mut legend = vec![Span::raw(" clients: ")];
    let clients = model.clients.legend();
    if clients.is_empty() {
        legend.push(Span::styled("none yet", Style::new().fg(Color::DarkGray)));
    }
    for (host, i) in clients {
        legend.push(Span::styled(
            format!("■ {host}  "),
            Style::new().fg(PALETTE[i % PALETTE.len()]),
        ));
    }
    legend.push(Span::styled("  q quit", Style::new().fg(Color::DarkGray)));
    let recent: Vec<String> = model
        .log
        .iter()
        .rev()
        .filter(|l| model.now.saturating_sub(l.at) < EVENT_SHOWN)
        .take(4)
        .map(|l| {
            format!(
                "{} ({}s ago)",
                l.text,
                model.now.saturating_sub(l.at).as_secs()
            )
        })
        .collect();
    let toolchains = model
        .nodes
        .iter()
        .filter(|n| n.left.is_none())
        .map(|n| n.status.toolchains.len())
        .max()
        .unwrap_or(0);
    let mem: u64 = model
        .nodes
        .iter()
        .filter(|n| n.left.is_none())
        .filter_map(|n| n.status.load.map(|l| l.mem_available))
        .sum();
    let events = if recent.is_empty() {
        format!(
            " farm: {} free memory on the nodes, up to {toolchains} toolchain(s) held per node",
            human_bytes(mem)
        )
    } else {
        format!(" events: {}", recent.join(" · "))
    };
    vec![Line::from(legend), Line::from(events)]
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn truncate(text: &str, width: usize) -> String {
    text.chars().take(width).collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use ratatui::buffer::Buffer;

    use super::*;
    use crate::monitor::model::tests::{job, node, snapshot};
    use crate::monitor::simulation::Simulation;

    fn render(model: &Model, view: &ViewState, width: u16, height: u16) -> Buffer {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| draw(f, model, view)).unwrap();
        terminal.backend().buffer().clone()
    }

    fn lines(buffer: &Buffer) -> Vec<String> {
        let area = buffer.area;
        (area.top()..area.bottom())
            .map(|y| {
                (area.left()..area.right())
                    .map(|x| buffer[(x, y)].symbol())
                    .collect::<String>()
            })
            .collect()
    }

    fn line_with<'a>(lines: &'a [String], text: &str) -> &'a str {
        lines
            .iter()
            .find(|l| l.contains(text))
            .unwrap_or_else(|| panic!("no line with {text:?} in\n{}", lines.join("\n")))
    }

    fn two_node_farm() -> Model {
        let mut m = Model::new("127.0.0.1:7700");
        let status = snapshot(
            vec![node(1, "build-01", 3, 4), node(2, "desk-07", 1, 2)],
            vec![
                job(11, 1, "regex_syntax", "alice:100", JobPhase::Running, 4_000),
                job(12, 1, "serde", "bob:200", JobPhase::Running, 1_500),
                job(13, 1, "memchr", "alice:101", JobPhase::Assigned, 200),
                job(14, 2, "syn", "bob:201", JobPhase::Running, 2_500),
                job(15, 2, "quote", "alice:102", JobPhase::Running, 900),
            ],
            3,
        );
        m.observe(Duration::ZERO, &status);
        // quote ends, and serde; libc appears.
        let status = snapshot(
            vec![node(1, "build-01", 3, 4), node(2, "desk-07", 1, 2)],
            vec![
                job(11, 1, "regex_syntax", "alice:100", JobPhase::Running, 4_500),
                job(13, 1, "memchr", "alice:101", JobPhase::Running, 700),
                job(16, 1, "libc", "bob:202", JobPhase::Assigned, 100),
                job(14, 2, "syn", "bob:201", JobPhase::Running, 3_000),
            ],
            5,
        );
        m.observe(Duration::from_millis(500), &status);
        m
    }

    #[test]
    fn nodes_show_their_slots_and_jobs() {
        let m = two_node_farm();
        let screen = lines(&render(&m, &ViewState::default(), 160, 40));
        let build01 = line_with(&screen, "build-01");
        assert!(build01.contains("3/4"), "{build01}");
        assert!(build01.contains("cpu  50%"), "{build01}");
        // Two columns per slot: two running, one assigned, one free.
        assert!(build01.contains("████▒▒··"), "{build01}");
        assert!(
            build01.contains("regex_syntax memchr libc"),
            "jobs on the node, longest first: {build01}"
        );
        let desk = line_with(&screen, "desk-07 ");
        assert!(desk.contains("1/2") && desk.contains("██··"), "{desk}");
        assert!(desk.contains(" syn"), "{desk}");
        let summary = line_with(&screen, "slots busy");
        assert!(
            summary.contains("2 nodes · 4/6 slots busy · 4 jobs in flight · 0 requests waiting"),
            "{summary}"
        );
        let throughput = line_with(&screen, "Throughput");
        assert!(
            throughput
                .contains("scheduler totals: 5 ok, 0 compile errors, 0 failed, 0 run locally"),
            "{throughput}"
        );
    }

    #[test]
    fn the_job_list_shows_live_jobs_then_ended_ones() {
        let m = two_node_farm();
        let screen = lines(&render(&m, &ViewState::default(), 160, 40));
        let header = screen
            .iter()
            .position(|l| l.contains("JOB") && l.contains("CRATE"))
            .unwrap();
        let rows: Vec<Vec<&str>> = screen[header + 1..header + 7]
            .iter()
            .map(|l| {
                l.trim_matches(|c| c == '│' || c == ' ')
                    .split_whitespace()
                    .collect()
            })
            .collect();
        assert_eq!(
            rows[0],
            [
                "j11",
                "regex_syntax",
                "alice",
                "build-01",
                "running",
                "4.5s",
                "≤4.0s",
                "-",
                "-"
            ]
        );
        assert_eq!(
            rows[1],
            [
                "j14", "syn", "bob", "desk-07", "running", "3.0s", "≤2.5s", "-", "-"
            ]
        );
        assert_eq!(
            rows[2],
            [
                "j13", "memchr", "alice", "build-01", "running", "0.7s", "≤0.7s", "-", "-"
            ]
        );
        assert_eq!(
            rows[3],
            [
                "j16", "libc", "bob", "build-01", "assigned", "0.1s", "-", "-", "-"
            ]
        );
        // Ended: times are the middle of what the two snapshots allow.
        let ended: Vec<&str> = rows[4..].iter().map(|r| r[1]).collect();
        assert!(
            ended.contains(&"serde") && ended.contains(&"quote"),
            "{rows:?}"
        );
        let serde = rows.iter().find(|r| r[1] == "serde").unwrap();
        assert_eq!(serde[4..], ["ended", "1.8s", "≤1.5s", "-", "-"]);
        assert!(line_with(&screen, "Jobs: 4 in flight, 2 seen ending").contains("rows 1–6 of 6"));
    }

    #[test]
    fn ended_jobs_from_the_schedulers_history_show_outcome_and_bytes() {
        let mut m = two_node_farm();
        let serde = m
            .ended
            .iter_mut()
            .find(|e| e.crate_name == "serde")
            .unwrap();
        serde.report = Some(EndReport {
            outcome: JobOutcome::Compiled { exit_code: 0 },
            bytes_in: 1536,
            bytes_out: 3 << 20,
        });
        let quote = m
            .ended
            .iter_mut()
            .find(|e| e.crate_name == "quote")
            .unwrap();
        quote.report = Some(EndReport {
            outcome: JobOutcome::Compiled { exit_code: 1 },
            bytes_in: 100,
            bytes_out: 200,
        });
        let screen = lines(&render(&m, &ViewState::default(), 160, 40));
        let serde = line_with(&screen, "serde");
        assert!(
            serde.contains("done") && serde.contains("1.5 KiB") && serde.contains("3.0 MiB"),
            "{serde}"
        );
        let quote = line_with(&screen, "quote");
        assert!(
            quote.contains("error") && quote.contains("100 B") && quote.contains("200 B"),
            "{quote}"
        );
    }

    #[test]
    fn slot_bars_are_coloured_by_client_host() {
        let m = two_node_farm();
        let buffer = render(&m, &ViewState::default(), 160, 40);
        let screen = lines(&buffer);
        let y = screen.iter().position(|l| l.contains("build-01")).unwrap() as u16;
        let x = screen[y as usize].find('█').unwrap();
        // `find` gives a byte offset; the columns before the bar are ASCII
        // except the border.
        let x = screen[y as usize][..x].chars().count() as u16;
        let alice = client_colour(&m, "alice:1");
        let bob = client_colour(&m, "bob:1");
        assert_ne!(alice, bob);
        assert_eq!(buffer[(x, y)].fg, alice, "regex_syntax is alice's");
        assert_eq!(buffer[(x + 2, y)].fg, alice, "memchr is alice's");
        assert_eq!(buffer[(x + 4, y)].fg, bob, "libc is bob's");
        let legend = line_with(&screen, "clients:");
        assert!(
            legend.contains("■ alice") && legend.contains("■ bob"),
            "{legend}"
        );
    }

    #[test]
    fn a_node_that_left_and_an_unreachable_scheduler_are_shown() {
        let mut m = two_node_farm();
        m.observe(
            Duration::from_secs(1),
            &snapshot(
                vec![node(1, "build-01", 1, 4)],
                vec![job(
                    11,
                    1,
                    "regex_syntax",
                    "alice:100",
                    JobPhase::Running,
                    5_000,
                )],
                7,
            ),
        );
        m.unreachable(Duration::from_secs(4), "no answer within 3 s");
        m.tick(Duration::from_secs(9));
        let screen = lines(&render(&m, &ViewState::default(), 160, 40));
        assert!(line_with(&screen, "desk-07").contains("left 8s ago"));
        let header = line_with(&screen, "distcc-rs monitor");
        assert!(
            header.contains("scheduler unreachable for 5s, retrying: no answer within 3 s"),
            "{header}"
        );
        let syn = line_with(&screen, " syn ");
        assert!(syn.contains("node left"), "{syn}");
        assert!(line_with(&screen, "events:").contains("desk-07 left"));
    }

    #[test]
    fn scrolling_moves_the_job_list_and_stops_at_its_end() {
        let m = two_node_farm();
        let mut view = ViewState::default();
        view.scroll_by(2, job_rows(&m));
        let screen = lines(&render(&m, &view, 160, 40));
        assert!(line_with(&screen, "Jobs:").contains("rows 3–6 of 6"));
        assert!(!screen.iter().any(|l| l.contains("j11")), "scrolled past");
        view.scroll_by(100, job_rows(&m));
        assert_eq!(view.scroll, 5);
        view.scroll_by(-100, job_rows(&m));
        assert_eq!(view.scroll, 0);
    }

    #[test]
    fn the_simulated_farm_renders_on_a_small_terminal_too() {
        let mut sim = Simulation::new(3);
        let mut m = Model::new("simulated farm");
        for i in 1..=120 {
            m.observe(Duration::from_millis(500 * i), &sim.step(500));
        }
        for (w, h) in [(120, 40), (80, 24), (40, 10)] {
            let screen = lines(&render(&m, &ViewState::default(), w, h));
            assert!(screen[0].contains("distcc-rs monitor"), "{w}x{h}");
            if h >= 24 {
                assert!(line_with(&screen, "build-01").contains('/'));
                assert!(screen.iter().any(|l| l.contains("Throughput")));
            }
        }
    }
}
