//! `timeline.svg`: every request of every scenario, one panel per scenario,
//! readable without the code.
//!
//! - x: when the request was due (seconds since the scenario's load
//!   started); y: its latency, log scale, labelled 1-2-5 up to the slowest
//!   answer, so no point sits above the last label.
//! - Colour is the model's role and means the same in every panel:
//!   `primary` blue, `secondary` orange, `tertiary` purple, `rules` (the
//!   template) green.
//! - Shape is the kind of request: a round dot a complete (non-streamed)
//!   answer, a square a streamed one (latency to its last chunk). The two
//!   bands a panel often shows are these two kinds: the fakes pace their
//!   tokens, and a stream is measured to its end.
//! - A clean error is a black cross, a lost request a red cross in the
//!   labelled band above the plot; the primary's scripted outage is shaded.
//! - A legend at the top says all of this once.
//!
//! Each (role, shape) of a panel is one `<path>` of zero-length round or
//! square strokes with relative moves, so 15,000 requests take about a
//! tenth of the bytes one element per request did.

use std::fmt::Write as _;

use crate::load::Outcome;
use crate::run::ScenarioRun;

const WIDTH: f64 = 960.0;
const HEADER: f64 = 74.0;
const PANEL: f64 = 184.0;
const LEFT: f64 = 86.0;
const RIGHT: f64 = 24.0;
/// Title line, then the band where lost requests are drawn.
const TOP: f64 = 50.0;
const LOST_BAND: f64 = 18.0;
const BOTTOM: f64 = 36.0;
const MARK: f64 = 3.6;

/// Colours of the chain roles the chaos scenarios use, fixed across panels.
const ROLES: [(&str, &str); 4] = [
    ("primary", "#1f77b4"),
    ("secondary", "#ff7f0e"),
    ("tertiary", "#9467bd"),
    ("rules", "#2ca02c"),
];
/// For models of other names, in chain order.
const OTHERS: [&str; 3] = ["#8c564b", "#17becf", "#e377c2"];
const UNKNOWN: &str = "#000000";
const CLEAN_ERROR: &str = "#000000";
const LOST: &str = "#d62728";
const OUTAGE: &str = "#f4a6a6";
const AXIS: &str = "#555555";

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The colour of a model: its role's, or one of the others by chain place.
fn role_colour(model: &str, chain: &[String]) -> &'static str {
    if let Some((_, colour)) = ROLES.iter().find(|(role, _)| *role == model) {
        return colour;
    }
    let others: Vec<&String> = chain
        .iter()
        .filter(|m| !ROLES.iter().any(|(role, _)| role == m))
        .collect();
    others
        .iter()
        .position(|m| *m == model)
        .map_or(UNKNOWN, |i| OTHERS[i % OTHERS.len()])
}

/// The SVG timeline of `runs`.
pub fn render_timeline(runs: &[ScenarioRun]) -> String {
    let height = HEADER + PANEL * runs.len().max(1) as f64;
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    legend(&mut out, runs);
    for (i, run) in runs.iter().enumerate() {
        panel(&mut out, run, HEADER + PANEL * i as f64);
    }
    out.push_str("</svg>\n");
    out
}

/// The legend, once for every panel.
fn legend(out: &mut String, runs: &[ScenarioRun]) {
    let _ = writeln!(
        out,
        r#"<text x="12" y="18" font-size="14" font-weight="bold">Backstop chaos timeline: every request of every scenario</text>"#
    );
    let mut x = 12.0;
    let y = 40.0;
    let mut item = |out: &mut String, mark: &str, label: &str| {
        let _ = writeln!(
            out,
            r#"<g transform="translate({x:.1} {y:.1})">{mark}<text x="10" y="4">{}</text></g>"#,
            escape(label)
        );
        x += 18.0 + 6.2 * label.chars().count() as f64;
    };
    let mut roles: Vec<(String, &str)> = ROLES
        .iter()
        .filter(|(role, _)| runs.iter().any(|r| r.spec.chain.iter().any(|m| m == role)))
        .map(|&(role, colour)| (role.to_owned(), colour))
        .collect();
    for run in runs {
        for model in &run.spec.chain {
            if !roles.iter().any(|(m, _)| m == model) {
                roles.push((model.clone(), role_colour(model, &run.spec.chain)));
            }
        }
    }
    for (model, colour) in &roles {
        let label = format!("answered by {model}");
        item(out, &format!(r#"<circle r="4" fill="{colour}"/>"#), &label);
    }
    let y2 = 60.0;
    x = 12.0;
    let mut item2 = |out: &mut String, mark: &str, label: &str| {
        let _ = writeln!(
            out,
            r#"<g transform="translate({x:.1} {y2:.1})">{mark}<text x="10" y="4">{}</text></g>"#,
            escape(label)
        );
        x += 18.0 + 6.2 * label.chars().count() as f64;
    };
    item2(out, r##"<circle r="3.5" fill="#444"/>"##, "complete answer");
    item2(
        out,
        r##"<rect x="-3.2" y="-3.2" width="6.4" height="6.4" fill="#444"/>"##,
        "streamed answer (latency to its last chunk)",
    );
    item2(
        out,
        &format!(r#"<path d="M-3 -3l6 6m0 -6l-6 6" stroke="{CLEAN_ERROR}" stroke-width="1.4"/>"#),
        "clean error",
    );
    item2(
        out,
        &format!(r#"<path d="M-3 -3l6 6m0 -6l-6 6" stroke="{LOST}" stroke-width="1.6"/>"#),
        "lost (top band)",
    );
    item2(
        out,
        &format!(
            r#"<rect x="-4" y="-6" width="8" height="12" fill="{OUTAGE}" fill-opacity="0.5"/>"#
        ),
        "primary's scripted outage",
    );
}

/// `1, 2, 5, 10, 20, 50, ...` up to the first at or above `max`.
fn ticks(max: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut decade = 1.0_f64;
    loop {
        for step in [1.0, 2.0, 5.0] {
            let t = decade * step;
            out.push(t);
            if t >= max {
                return out;
            }
        }
        decade *= 10.0;
    }
}

/// Zero-length strokes drawn as dots (round caps) or squares (square
/// caps), moving relatively from point to point.
#[derive(Default)]
struct Marks {
    path: String,
    at: Option<(f64, f64)>,
    count: usize,
}

impl Marks {
    fn add(&mut self, x: f64, y: f64) {
        let (x, y) = ((x * 2.0).round() / 2.0, (y * 2.0).round() / 2.0);
        match self.at {
            None => {
                let _ = write!(self.path, "M{x} {y}h0");
            }
            Some((px, py)) => {
                let (dx, dy) = (x - px, y - py);
                let _ = write!(self.path, "m{dx}");
                if dy >= 0.0 {
                    self.path.push(' ');
                }
                let _ = write!(self.path, "{dy}h0");
            }
        }
        self.at = Some((x, y));
        self.count += 1;
    }
}

fn panel(out: &mut String, run: &ScenarioRun, y0: f64) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = PANEL - TOP - BOTTOM;
    let lost_top = y0 + TOP - LOST_BAND;
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
    let slowest = run
        .records
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Lost(_)))
        .map(|r| r.latency.as_secs_f64() * 1000.0)
        .fold(1.0_f64, f64::max);
    let ticks = ticks(slowest);
    let hi = ticks.last().copied().unwrap_or(10.0).log10();
    let x = |secs: f64| LEFT + plot_w * (secs / span).clamp(0.0, 1.0);
    let y = |ms: f64| bottom - plot_h * (ms.max(1.0).log10() / hi).clamp(0.0, 1.0);

    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="{:.1}" font-size="12" font-weight="bold">{}</text><text x="{:.1}" y="{:.1}" fill="{AXIS}">{}</text>"##,
        y0 + 16.0,
        escape(run.spec.name),
        LEFT + 8.0 + 7.5 * run.spec.name.len() as f64,
        y0 + 16.0,
        escape(run.spec.summary)
    );
    for &(start, end) in &run.outages {
        let (x0, x1) = (x(start.as_secs_f64()), x(end.as_secs_f64()));
        let _ = writeln!(
            out,
            r#"<rect x="{x0:.1}" y="{lost_top:.1}" width="{:.1}" height="{:.1}" fill="{OUTAGE}" fill-opacity="0.5"/>"#,
            (x1 - x0).max(0.5),
            plot_h + LOST_BAND
        );
    }
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{top:.1}" width="{plot_w:.1}" height="{plot_h:.1}" fill="none" stroke="#999"/><line x1="{LEFT}" x2="{:.1}" y1="{lost_top:.1}" y2="{lost_top:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="{LOST}">lost</text>"##,
        LEFT + plot_w,
        LEFT - 4.0,
        lost_top + 11.0
    );
    let highest = ticks.last().copied().unwrap_or(1.0);
    for &tick in &ticks {
        let ty = y(tick);
        let major = (tick.log10().fract()).abs() < 1e-9;
        // Decades and the top are labelled; 2 and 5 are faint lines. An
        // answer under 1 ms is drawn on the bottom line, hence "<= 1".
        let crowds_the_top = tick != highest && ty - y(highest) < 12.0;
        let label = if tick == 1.0 {
            "&lt;= 1".to_owned()
        } else if (!major && tick != highest) || crowds_the_top {
            String::new()
        } else if tick >= 1000.0 {
            format!("{} s", tick / 1000.0)
        } else {
            format!("{tick}")
        };
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{ty:.1}" y2="{ty:.1}" stroke="{}"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="{AXIS}">{label}</text>"##,
            LEFT + plot_w,
            if major { "#e4e4e4" } else { "#f3f3f3" },
            LEFT - 4.0,
            ty + 4.0
        );
    }
    let mid = (top + bottom) / 2.0;
    let _ = writeln!(
        out,
        r#"<text transform="translate({:.1} {mid:.1}) rotate(-90)" text-anchor="middle" fill="{AXIS}">latency, ms (log)</text>"#,
        LEFT - 46.0
    );
    let step = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0]
        .into_iter()
        .find(|s| span / s <= 12.0)
        .unwrap_or(60.0);
    let mut t = 0.0;
    while t <= span + 1e-9 {
        let tx = x(t);
        let _ = writeln!(
            out,
            r#"<line x1="{tx:.1}" x2="{tx:.1}" y1="{bottom:.1}" y2="{:.1}" stroke="{AXIS}"/><text x="{tx:.1}" y="{:.1}" text-anchor="middle" fill="{AXIS}">{t}</text>"#,
            bottom + 4.0,
            bottom + 15.0
        );
        t += step;
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="{AXIS}">time since the load started, s (each mark: one request, at the time it was due)</text>"#,
        LEFT + plot_w / 2.0,
        bottom + 29.0
    );

    // One path per role and shape; clean errors and lost requests as crosses.
    let mut marks: Vec<(&'static str, bool, Marks)> = Vec::new();
    let mut crosses = String::new();
    let mut lost = String::new();
    for r in &run.records {
        let px = x(r.intended_at.as_secs_f64());
        match r.outcome {
            Outcome::Lost(_) => {
                let _ = write!(lost, "M{:.1} {:.1}l5 5m0 -5l-5 5", px - 2.5, lost_top + 3.5);
            }
            Outcome::FailedClean { .. } => {
                let py = y(r.latency.as_secs_f64() * 1000.0);
                let _ = write!(crosses, "M{:.1} {:.1}l5 5m0 -5l-5 5", px - 2.5, py - 2.5);
            }
            Outcome::Succeeded => {
                let colour = r
                    .model
                    .as_deref()
                    .map_or(UNKNOWN, |m| role_colour(m, &run.spec.chain));
                let index = match marks
                    .iter()
                    .position(|(c, s, _)| *c == colour && *s == r.stream)
                {
                    Some(i) => i,
                    None => {
                        marks.push((colour, r.stream, Marks::default()));
                        marks.len() - 1
                    }
                };
                marks[index].2.add(px, y(r.latency.as_secs_f64() * 1000.0));
            }
        }
    }
    for (colour, stream, m) in &marks {
        let (cap, width) = if *stream {
            ("square", MARK * 0.9)
        } else {
            ("round", MARK)
        };
        let _ = writeln!(
            out,
            r#"<path class="answers" data-count="{}" d="{}" stroke="{colour}" stroke-width="{width:.1}" stroke-linecap="{cap}" fill="none"/>"#,
            m.count, m.path
        );
    }
    if !crosses.is_empty() {
        let _ = writeln!(
            out,
            r#"<path d="{crosses}" stroke="{CLEAN_ERROR}" stroke-width="1.2" fill="none"/>"#
        );
    }
    if !lost.is_empty() {
        let _ = writeln!(
            out,
            r#"<path d="{lost}" stroke="{LOST}" stroke-width="1.4" fill="none"/>"#
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_run_one_two_five_up_to_the_slowest() {
        assert_eq!(
            ticks(431.0),
            [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0]
        );
        assert_eq!(ticks(1.0), [1.0]);
    }

    #[test]
    fn a_role_has_one_colour_whatever_its_place_in_the_chain() {
        let three: Vec<String> = ["primary", "secondary", "rules"].map(String::from).into();
        let four: Vec<String> = ["primary", "secondary", "tertiary", "rules"]
            .map(String::from)
            .into();
        assert_eq!(role_colour("rules", &three), role_colour("rules", &four));
        assert_ne!(role_colour("tertiary", &four), role_colour("rules", &four));
        let custom: Vec<String> = ["gpt", "rules"].map(String::from).into();
        assert_eq!(role_colour("gpt", &custom), OTHERS[0]);
    }

    #[test]
    fn marks_move_relatively_and_count_every_point() {
        let mut m = Marks::default();
        m.add(10.0, 20.0);
        m.add(12.26, 18.0);
        m.add(12.26, 18.0);
        assert_eq!(m.path, "M10 20h0m2.5-2h0m0 0h0");
        assert_eq!(m.count, 3);
    }
}
