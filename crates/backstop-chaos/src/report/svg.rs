//! `timeline.svg`: one panel per scenario, each request a dot at (intended
//! send time, latency), coloured by the model that answered; clean errors
//! grey, lost requests red crosses at the top; the primary's outage
//! windows shaded. Latency is on a log scale so a 20 ms answer and a 2 s
//! timeout fit one panel.

use std::fmt::Write as _;

use crate::load::Outcome;
use crate::run::ScenarioRun;

const WIDTH: f64 = 960.0;
const PANEL: f64 = 150.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 26.0;
const BOTTOM: f64 = 24.0;
const PALETTE: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#17becf",
];
const CLEAN_ERROR: &str = "#7f7f7f";
const LOST: &str = "#d62728";
const UNKNOWN: &str = "#000000";

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG timeline of `runs`.
pub fn render_timeline(runs: &[ScenarioRun]) -> String {
    let height = PANEL * runs.len().max(1) as f64;
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, run) in runs.iter().enumerate() {
        panel(&mut out, run, PANEL * i as f64);
    }
    out.push_str("</svg>\n");
    out
}

fn panel(out: &mut String, run: &ScenarioRun, y0: f64) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = PANEL - TOP - BOTTOM;
    let top = y0 + TOP;
    let bottom = top + plot_h;
    let span = run
        .spec
        .load()
        .duration()
        .max(
            run.records
                .last()
                .map(|r| r.intended_at)
                .unwrap_or_default(),
        )
        .as_secs_f64()
        .max(0.001);
    let max_ms = run
        .records
        .iter()
        .map(|r| r.latency.as_secs_f64() * 1000.0)
        .fold(100.0_f64, f64::max);
    let (lo, hi) = (0.0_f64, max_ms.log10());
    let x = |secs: f64| LEFT + plot_w * (secs / span).clamp(0.0, 1.0);
    let y = |ms: f64| bottom - plot_h * ((ms.max(1.0).log10() - lo) / (hi - lo)).clamp(0.0, 1.0);

    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="{:.1}" font-weight="bold">{}</text><text x="{:.1}" y="{:.1}" fill="#555">{}</text>"##,
        y0 + 16.0,
        escape(run.spec.name),
        LEFT + 150.0,
        y0 + 16.0,
        escape(run.spec.summary)
    );
    for &(start, end) in &run.outages {
        let (x0, x1) = (x(start.as_secs_f64()), x(end.as_secs_f64()));
        let _ = writeln!(
            out,
            r##"<rect x="{x0:.1}" y="{top:.1}" width="{:.1}" height="{plot_h:.1}" fill="#f4a6a6" fill-opacity="0.35"/>"##,
            (x1 - x0).max(0.5)
        );
    }
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{top:.1}" width="{plot_w:.1}" height="{plot_h:.1}" fill="none" stroke="#999"/>"##
    );
    let mut tick = 1.0_f64;
    while tick <= max_ms * 1.0001 {
        let ty = y(tick);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{ty:.1}" y2="{ty:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">{tick} ms</text>"##,
            LEFT + plot_w,
            LEFT - 4.0,
            ty + 4.0
        );
        tick *= 10.0;
    }
    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="{:.1}" fill="#555">0 s</text><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">{span:.1} s</text>"##,
        bottom + 14.0,
        LEFT + plot_w,
        bottom + 14.0
    );

    let colour = |model: Option<&str>| -> &'static str {
        match model.and_then(|m| run.spec.chain.iter().position(|c| c == m)) {
            Some(i) => PALETTE[i % PALETTE.len()],
            None => UNKNOWN,
        }
    };
    for r in &run.records {
        let px = x(r.intended_at.as_secs_f64());
        match r.outcome {
            Outcome::Lost(_) => {
                let py = top + 4.0;
                let _ = writeln!(
                    out,
                    r#"<path d="M{:.1} {:.1}l6 6m0 -6l-6 6" stroke="{LOST}" stroke-width="1.2"/>"#,
                    px - 3.0,
                    py - 3.0
                );
            }
            outcome => {
                let fill = if matches!(outcome, Outcome::FailedClean { .. }) {
                    CLEAN_ERROR
                } else {
                    colour(r.model.as_deref())
                };
                let py = y(r.latency.as_secs_f64() * 1000.0);
                let _ = writeln!(
                    out,
                    r#"<circle cx="{px:.1}" cy="{py:.1}" r="1.6" fill="{fill}" fill-opacity="0.8"/>"#
                );
            }
        }
    }

    let legend_x = LEFT + plot_w + 14.0;
    let mut ly = top + 8.0;
    let mut entry = |out: &mut String, colour: &str, label: &str| {
        let _ = writeln!(
            out,
            r#"<circle cx="{legend_x:.1}" cy="{ly:.1}" r="4" fill="{colour}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            legend_x + 9.0,
            ly + 4.0,
            escape(label)
        );
        ly += 15.0;
    };
    for (i, model) in run.spec.chain.iter().enumerate() {
        entry(out, PALETTE[i % PALETTE.len()], model);
    }
    entry(out, CLEAN_ERROR, "clean error");
    entry(out, LOST, "lost");
}
