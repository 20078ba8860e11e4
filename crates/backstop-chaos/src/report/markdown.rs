//! `report.md`: one table a person reads at a glance, then every missed
//! target and what each scenario breaks.

use std::fmt::Write as _;

use super::{Report, check_targets};

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.1}"))
}

/// The Markdown report.
pub fn render_markdown(report: &Report) -> String {
    let mut out = String::new();
    let mode = if report.quick { "quick" } else { "full" };
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# Backstop chaos report\n");
    let _ = writeln!(out, "Version {}, {mode} run.\n", report.version);
    out.push_str(
        "| scenario | requests | ok | clean errors | lost | success | p50 ms | p99 ms | failover +p99 ms | detect ms | recover ms | attempts/req | levels | targets |\n",
    );
    out.push_str("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|\n");
    for s in &report.scenarios {
        let levels = s
            .fallback_levels
            .iter()
            .map(|(level, n)| format!("L{level}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let missed = s.targets.iter().filter(|t| !t.met).count();
        let targets = if missed == 0 {
            format!("✅ {}/{}", s.targets.len(), s.targets.len())
        } else {
            format!("❌ {missed} missed")
        };
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} | {:.1} % | {:.1} | {:.1} | {} | {} | {} | {:.2} | {} | {} |",
            s.name,
            s.requests,
            s.succeeded,
            s.failed_clean,
            s.lost,
            s.success_rate * 100.0,
            s.latency_ms.p50,
            s.latency_ms.p99,
            opt(s.failover_added_ms.map(|a| a.p99)),
            opt(s.time_to_detect_ms),
            opt(s.time_to_recover_ms),
            s.retry_amplification,
            if levels.is_empty() {
                "–".to_owned()
            } else {
                levels
            },
            targets,
        );
    }

    let missed = check_targets(report);
    out.push_str("\n## Targets\n\n");
    if missed.is_empty() {
        out.push_str("Every target met.\n");
    } else {
        for m in &missed {
            let _ = writeln!(out, "- ❌ {m}");
        }
    }
    out.push_str("\nEach target with what was measured:\n\n");
    out.push_str("| scenario | figure | measured | target | |\n|---|---|--:|---|---|\n");
    for s in &report.scenarios {
        for t in &s.targets {
            let measured = t.measured.map_or_else(
                || {
                    format!(
                        "not measured{}",
                        t.note
                            .as_ref()
                            .map(|n| format!(": {n}"))
                            .unwrap_or_default()
                    )
                },
                |v| {
                    format!("{v:.3}")
                        .trim_end_matches('0')
                        .trim_end_matches('.')
                        .to_owned()
                },
            );
            let _ = writeln!(
                out,
                "| `{}` | `{}` | {measured} | {} | {} |",
                s.name,
                t.figure,
                t.target,
                if t.met { "✅" } else { "❌" }
            );
        }
    }

    out.push_str(&crate::fleet::render_fleet_markdown(
        &report.fleet,
        report.fleet_skipped.as_deref(),
    ));

    out.push_str("\n## Scenarios\n\n");
    for s in &report.scenarios {
        let _ = write!(out, "- `{}`: {}.", s.name, s.summary);
        if !s.lost_reasons.is_empty() {
            let reasons = s
                .lost_reasons
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = write!(out, " Lost: {reasons}.");
        }
        let a = s.anomalies;
        if a.usage_missing + a.unexpected_model + a.model_unknown + a.missing_done > 0 {
            let _ = write!(
                out,
                " Anomalies: usage missing {}, unexpected model {}, model unknown {}, missing [DONE] {}.",
                a.usage_missing, a.unexpected_model, a.model_unknown, a.missing_done
            );
        }
        out.push('\n');
        if let Some(d) = &s.dashboard {
            let _ = writeln!(out, "  - dashboard at the end: {}", d.summary());
        }
    }
    out
}
