//! The self-contained HTML after-action report: no external assets, inline SVG.

use std::fmt::Write as _;

use crate::report::Report;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Renders the report.
pub(crate) fn render(r: &Report) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let verdict = if r.passed {
        ("PASSED", "#1b7f3b")
    } else {
        ("FAILED", "#b3261e")
    };
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>CICA Hotline after-action report: {name}</title>
<style>
body{{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d1d1f}}
h1{{margin:0 0 4px}} .verdict{{display:inline-block;padding:4px 12px;border-radius:4px;color:#fff;background:{vc};font-weight:700}}
table{{border-collapse:collapse;margin:12px 0;font-size:13px}} td,th{{border:1px solid #ccc;padding:4px 6px;text-align:left}}
th{{background:#f3f3f3}} .ok{{background:#d7f0dd}} .late{{background:#fff1c2}} .bad{{background:#f8d3cf}} .na{{background:#f4f4f4;color:#999}}
.muted{{color:#666}} svg text{{font-size:11px;font-family:inherit}}
</style></head><body>
<h1>After-action report: {name}</h1>
<p class="muted">{desc}</p>
<p><span class="verdict">{v}</span> &nbsp; time compression {comp}x &middot; seed {seed} &middot; {wall:.1} s wall clock &middot; messages accepted {acc}, lost {lost}, duplicates shown {dup}</p>
"#,
        name = esc(&r.scenario),
        desc = esc(&r.description),
        vc = verdict.1,
        v = verdict.0,
        comp = r.time_compression,
        seed = r.seed,
        wall = r.wall_s,
        acc = r.messages_accepted,
        lost = r.messages_lost,
        dup = r.duplicates_shown,
    );

    // Objectives and invariants.
    h.push_str("<h2>Objectives</h2><table><tr><th>Objective</th><th>Result</th><th>In scope</th><th>Shortfalls</th></tr>");
    for o in &r.objectives {
        let _ = write!(
            h,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if o.met { "ok" } else { "bad" },
            esc(&o.name),
            if o.met { "met" } else { "NOT MET" },
            o.in_scope,
            esc(&o
                .failed
                .iter()
                .cloned()
                .chain((!o.unscored.is_empty()).then(|| crate::report::unscored_line(&o.unscored)))
                .collect::<Vec<_>>()
                .join("; "))
        );
    }
    h.push_str("</table><h2>Invariants</h2><table><tr><th>Invariant</th><th>Result</th><th>Detail</th></tr>");
    for x in &r.invariants {
        let _ = write!(
            h,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td></tr>",
            if x.held { "ok" } else { "bad" },
            esc(&x.name),
            if x.held { "held" } else { "FAILED" },
            esc(&x.detail)
        );
    }
    h.push_str("</table>");

    // Timeline: one row per participant; sends, deliveries, acknowledgements, overdue marks.
    let t_max = r
        .participants
        .iter()
        .flat_map(|p| {
            p.cells.iter().enumerate().flat_map(|(k, c)| {
                let at = r.injects.get(k).map(|i| i.at_s).unwrap_or(0.0);
                [
                    c.delivered_s.map(|d| at + d),
                    c.acknowledged_s.map(|a| at + a),
                    c.acknowledged_at_node_s.map(|a| at + a),
                    c.answered_s.map(|a| at + a),
                    c.overdue_s.map(|o| at + o),
                ]
            })
        })
        .flatten()
        .chain(r.injects.iter().map(|i| i.at_s))
        .chain(r.faults.iter().filter_map(|f| f["at_s"].as_f64()))
        .fold(1.0f64, f64::max)
        * 1.05;
    let (left, width, row_h) = (70.0, 900.0, 14.0);
    let height = 52.0 + row_h * r.participants.len() as f64;
    let x = |t: f64| left + t / t_max * width;
    let _ = write!(h, "<h2>Timeline</h2><p class=\"muted\">Scenario seconds. ▲ inject sent (△ due, not sent; △? due, its send got no answer: not known whether it was sent) &nbsp; ● delivered (recipient holds it) &nbsp; ■ acknowledged (sender holds the receipt) &nbsp; □ acknowledged at the recipient's node only (it never reached its sender, down at the end) &nbsp; ✕ overdue &nbsp; red lines: faults (F1, F2… as listed under Faults)</p><svg width=\"{}\" height=\"{height}\" role=\"img\" aria-label=\"timeline\">", left + width + 20.0);
    let colours = [
        "#1565c0", "#6a1b9a", "#00838f", "#ef6c00", "#2e7d32", "#ad1457",
    ];
    for (t, label) in ticks(t_max) {
        let _ = write!(h, "<line x1=\"{0}\" x2=\"{0}\" y1=\"20\" y2=\"{1}\" stroke=\"#eee\"/><text x=\"{0}\" y=\"12\" text-anchor=\"middle\">{2}</text>", x(t), height, label);
    }
    // Each fault's line is named F1, F2… at its foot, as in the list of faults below.
    for (n, f) in r.faults.iter().enumerate() {
        if let Some(t) = f["at_s"].as_f64() {
            let what = esc(f["fault"].as_str().unwrap_or(""));
            let _ = write!(h, "<line x1=\"{0}\" x2=\"{0}\" y1=\"20\" y2=\"{1}\" stroke=\"#d32f2f\" stroke-dasharray=\"3,2\"><title>{2}</title></line><text x=\"{0}\" y=\"{3}\" text-anchor=\"middle\" fill=\"#d32f2f\">F{4}<title>{2}</title></text>", x(t), height - 12.0, what, height - 2.0, n + 1);
        }
    }
    for (k, inj) in r.injects.iter().enumerate() {
        let c = colours[k % colours.len()];
        // One never sent is drawn hollow where it was due: a filled mark said it was sent.
        // One whose send got no answer, and that may have been stored all the same, is not
        // known to be either: marked so, and its title says why.
        let (mark, what) = match (&inj.id, &inj.unanswered) {
            (Some(_), _) => ("▲", "sent".to_owned()),
            (None, Some(u)) if inj.state == "unknown" => ("△?", format!("due, {u},")),
            (None, _) => ("△", format!("due, {},", inj.state)),
        };
        let _ = write!(
            h,
            "<text x=\"{}\" y=\"30\" fill=\"{c}\">{mark}<title>{} {what} by {}</title></text>",
            x(inj.at_s) - 4.0,
            esc(&inj.name),
            esc(&inj.from)
        );
    }
    for (row, p) in r.participants.iter().enumerate() {
        let y = 44.0 + row_h * row as f64;
        let _ = write!(h, "<text x=\"4\" y=\"{}\">{}</text><line x1=\"{left}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#f2f2f2\"/>", y + 3.0, esc(&p.id), left + width, y, y);
        for (k, c) in p.cells.iter().enumerate() {
            if !c.addressed {
                continue;
            }
            let col = colours[k % colours.len()];
            let at = r.injects.get(k).map(|i| i.at_s).unwrap_or(0.0);
            if let Some(d) = c.delivered_s {
                let _ = write!(h, "<circle cx=\"{}\" cy=\"{y}\" r=\"3.5\" fill=\"{col}\"><title>{} delivered {} at +{d:.1}s</title></circle>", x(at + d), esc(&p.id), esc(&r.injects[k].name));
            }
            if let Some(a) = c.acknowledged_s {
                let _ = write!(h, "<rect x=\"{}\" y=\"{}\" width=\"7\" height=\"7\" fill=\"{col}\"><title>{} acknowledged {} at +{a:.1}s</title></rect>", x(at + a) - 3.5, y - 3.5, esc(&p.id), esc(&r.injects[k].name));
            } else if let Some(a) = c.acknowledged_at_node_s {
                // Given at the recipient's node, and never held by its sender (down at the
                // end): hollow, as the matrix's `at node`, not left out as never given.
                let _ = write!(h, "<rect x=\"{}\" y=\"{}\" width=\"6\" height=\"6\" fill=\"#fff\" stroke=\"{col}\" stroke-width=\"1.5\"><title>{} acknowledged {} at its node at +{a:.1}s; it never reached {} (node down at the end)</title></rect>", x(at + a) - 3.0, y - 3.0, esc(&p.id), esc(&r.injects[k].name), esc(&r.injects[k].from));
            }
            if let Some(a) = c.answered_s {
                let _ = write!(h, "<text x=\"{}\" y=\"{}\" fill=\"{col}\">↩<title>{} answered {} at +{a:.1}s</title></text>", x(at + a) - 4.0, y + 4.0, esc(&p.id), esc(&r.injects[k].name));
            }
            // Where its sender's node marked it overdue; at the right edge if that node did
            // not say when.
            if c.overdue && c.acknowledged_s.is_none() {
                let (at_x, when) = match c.overdue_s {
                    Some(o) => (x(at + o), format!(" at +{o:.1}s")),
                    None => (x(t_max * 0.98), String::new()),
                };
                let _ = write!(h, "<text x=\"{}\" y=\"{}\" fill=\"#d32f2f\">✕<title>{} overdue on {}{when}</title></text>", at_x - 4.0, y + 4.0, esc(&p.id), esc(&r.injects[k].name));
            }
        }
    }
    h.push_str("</svg>");

    // Participant × inject matrix.
    h.push_str("<h2>Participants × injects</h2><p class=\"muted\">delivered / acknowledged (· answered), scenario seconds after the inject (-: never; at node: acknowledged at the recipient's node, never reached the sender, whose node is down at the end; ·: not addressed). Green: acknowledged, the sender holds it; yellow: delivered and not overdue, the sender holds no acknowledgement (none given yet, or given at the recipient's node only); red: overdue (its respond-by passed with the sender holding no acknowledgement, whether or not the recipient acknowledged at its node since) or never delivered; grey: not addressed.</p><table><tr><th>Participant</th><th>Role</th>");
    for inj in &r.injects {
        let _ = write!(
            h,
            "<th>{}<br><span class=\"muted\">{} · {}</span></th>",
            esc(&inj.name),
            esc(&inj.precedence),
            esc(&inj.from)
        );
    }
    h.push_str("<th>Objectives</th></tr>");
    for p in &r.participants {
        let _ = write!(
            h,
            "<tr><td>{} <span class=\"muted\">{}</span></td><td>{}</td>",
            esc(&p.id),
            esc(&p.name),
            esc(&p.role)
        );
        for c in &p.cells {
            // The cell's words are the text summary's ([`Cell::text`]); its colour says
            // whether the sender holds the acknowledgement, and whether the respond-by
            // passed without it: an overdue cell is red as the legend says, acknowledged at
            // the recipient's node or not (the sender's node marked it overdue, and ran its
            // escalation; `OVERDUE … at node` in yellow read as on time).
            let class = if !c.addressed {
                "na"
            } else if c.acknowledged_s.is_some() {
                "ok"
            } else if c.overdue {
                "bad"
            } else if c.delivered_s.is_some() {
                "late"
            } else {
                "bad"
            };
            let text = match c.answered_s {
                Some(a) => format!("{} · answered {}", c.text(), fmt(Some(a))),
                None => c.text(),
            };
            let _ = write!(h, "<td class=\"{class}\">{}</td>", esc(&text));
        }
        let _ = write!(
            h,
            "<td class=\"{}\">{}</td></tr>",
            if p.objectives_met { "ok" } else { "bad" },
            if p.objectives_met { "met" } else { "not met" }
        );
    }
    h.push_str("</table>");
    let unread = r.inboxes_not_read_over_api();
    if !unread.is_empty() {
        h.push_str("<h2>Inboxes not read over their node's API</h2><table><tr><th>Participant</th><th>Inbox</th></tr>");
        for (id, why) in unread {
            let _ = write!(h, "<tr><td>{}</td><td>{}</td></tr>", esc(id), esc(why));
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>Injects</h2><table><tr><th>Name</th><th>Id</th><th>From</th><th>Precedence</th><th>Subject</th><th>State</th><th>Delivered</th><th>Acknowledged</th></tr>");
    for i in &r.injects {
        let _ = write!(h, "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}/{}</td><td>{}/{}</td></tr>", esc(&i.name), esc(i.id.as_deref().unwrap_or("")), esc(&i.from), esc(&i.precedence), esc(&i.subject), esc(&i.refused.as_ref().or(i.unanswered.as_ref()).map_or_else(|| i.state.clone(), |why| format!("{}: {why}", i.state))), i.delivered, i.recipients, i.acknowledged, i.recipients);
    }
    h.push_str("</table><h2>Faults</h2><ul>");
    for (n, f) in r.faults.iter().enumerate() {
        let _ = write!(
            h,
            "<li>F{}, t={:.0}s: {}</li>",
            n + 1,
            f["at_s"].as_f64().unwrap_or(0.0),
            esc(f["fault"].as_str().unwrap_or(""))
        );
    }
    for (p, s) in &r.proxies {
        let _ = write!(
            h,
            "<li>{} link impaired: {} datagrams, {} dropped, {} duplicated</li>",
            esc(p),
            s.datagrams,
            s.dropped,
            s.duplicated
        );
    }
    h.push_str("</ul><p class=\"muted\">Generated by the CICA Hotline exercise harness. All traffic in this drill carried status EXERCISE.</p></body></html>\n");
    h
}

/// The timeline's tick spacing: 1, 2 or 5 times a power of ten, the smallest giving at most
/// ten intervals over `span` seconds (a span of 922 s is ticked every 100 s, not every 92.2).
fn tick_step(span: f64) -> f64 {
    let rough = (span / 10.0).max(1e-9);
    let base = 10f64.powf(rough.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * base)
        .find(|s| *s >= rough)
        .unwrap_or(10.0 * base)
}

/// The timeline's ticks over `span` seconds ([`tick_step`] apart), each with its label: as
/// many decimals as the step needs, so that a short drill's ticks (every 0.2 s or 0.5 s) are
/// not all labelled with whole seconds (`0 0 0 1 1 1`, or `0 0 1 2 2` by rounding half to
/// even).
fn ticks(span: f64) -> Vec<(f64, String)> {
    let step = tick_step(span);
    // 0 for a step of 1 s or more, 1 for 0.1 to 0.5 s, 2 for 0.01 to 0.05 s…
    let decimals = (-step.log10() - 1e-9).ceil().max(0.0) as usize;
    (0..=(span / step) as u32)
        .map(|k| {
            let t = step * f64::from(k);
            (t, format!("{t:.decimals$}"))
        })
        .collect()
}

fn fmt(v: Option<f64>) -> String {
    v.map(|t| format!("{t:.1}s")).unwrap_or_else(|| "—".into())
}

#[cfg(test)]
mod tests {
    use super::{tick_step, ticks};

    #[test]
    fn timeline_ticks_are_labelled_with_the_seconds_they_stand_for() {
        for span in [1.05, 4.0, 8.0, 15.0, 922.0] {
            let ticks = ticks(span);
            assert!(ticks.len() >= 2, "span {span}: {ticks:?}");
            for (t, label) in &ticks {
                let read: f64 = label.parse().expect("a number");
                assert!((read - t).abs() < 1e-9, "span {span}: {t} labelled {label}");
            }
        }
        let labels: Vec<String> = ticks(4.0).into_iter().map(|(_, l)| l).collect();
        assert_eq!(
            labels,
            ["0.0", "0.5", "1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0"]
        );
        let labels: Vec<String> = ticks(922.0).into_iter().map(|(_, l)| l).collect();
        assert_eq!(labels.last().map(String::as_str), Some("900"));
    }

    #[test]
    fn timeline_ticks_fall_on_round_seconds() {
        for (span, step) in [
            (922.0, 100.0),
            (1_050.0, 200.0),
            (15.0, 2.0),
            (40.0, 5.0),
            (100.0, 10.0),
            (3_700.0, 500.0),
            (1.05, 0.2),
        ] {
            let got = tick_step(span);
            assert!((got - step).abs() < 1e-9, "span {span}: {got}, not {step}");
            assert!(
                span / got <= 10.0 + 1e-9,
                "span {span}: more than ten intervals"
            );
        }
    }
}
