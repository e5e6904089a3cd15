//! `--html FILE`: the report as one self-contained page (inline SVG, no scripts, nothing
//! fetched when viewed): the figures, the latency distribution, CPU and participants over
//! time, join times, and a ramp's steps.

use std::fmt::Write;

use super::report::{Report, summary};

const W: f64 = 760.0;
const H: f64 = 260.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 60.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 40.0;
const COLOURS: [&str; 4] = ["#1f6feb", "#d1242f", "#1a7f37", "#8250df"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" upper bound for an axis.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

struct Axes {
    x_max: f64,
    /// A logarithmic x axis from this value (None: linear from 0).
    x_log_min: Option<f64>,
    y_max: f64,
    /// A second y axis on the right (None: none).
    y2_max: Option<f64>,
}

impl Axes {
    fn x(&self, v: f64) -> f64 {
        let f = match self.x_log_min {
            Some(min) => (v.max(min) / min).log10() / (self.x_max / min).log10(),
            None => v / self.x_max,
        };
        LEFT + (W - LEFT - RIGHT) * f.clamp(0.0, 1.0)
    }

    /// Values at the x ticks: decades on a log axis, even steps on a linear one.
    fn x_ticks(&self) -> Vec<f64> {
        match self.x_log_min {
            Some(min) => {
                let mut v = Vec::new();
                let mut t = min;
                while t <= self.x_max * 1.0001 {
                    v.push(t);
                    t *= 10.0;
                }
                v
            }
            None => {
                let n = divisions(self.x_max);
                (0..=n).map(|i| self.x_max * i as f64 / n as f64).collect()
            }
        }
    }
    fn y(&self, v: f64) -> f64 {
        H - BOTTOM - (H - TOP - BOTTOM) * (v / self.y_max).clamp(0.0, 1.0)
    }
    fn y2(&self, v: f64) -> f64 {
        let max = self.y2_max.unwrap_or(1.0);
        H - BOTTOM - (H - TOP - BOTTOM) * (v / max).clamp(0.0, 1.0)
    }

    /// The frame, ticks and labels.
    fn draw(&self, out: &mut String, x_label: &str, y_label: &str, y2_label: Option<&str>) {
        let _ = write!(
            out,
            r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
            W - LEFT - RIGHT,
            H - TOP - BOTTOM
        );
        for xv in self.x_ticks() {
            let _ = write!(
                out,
                r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
                self.x(xv),
                H - BOTTOM + 15.0,
                fmt_tick(xv),
            );
        }
        let n = divisions(self.y_max);
        for i in 0..=n {
            let f = i as f64 / n as f64;
            let yv = self.y_max * f;
            let _ = write!(
                out,
                r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text><line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#eee"/>"##,
                LEFT - 5.0,
                self.y(yv) + 4.0,
                fmt_tick(yv),
                W - RIGHT,
                self.y(yv),
                self.y(yv)
            );
            if let Some(max) = self.y2_max {
                let _ = write!(
                    out,
                    r##"<text x="{:.1}" y="{:.1}" font-size="11">{}</text>"##,
                    W - RIGHT + 5.0,
                    self.y2(max * f) + 4.0,
                    fmt_tick(max * f)
                );
            }
        }
        let _ = write!(
            out,
            r##"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text><text x="14" y="{:.1}" font-size="12" text-anchor="middle" transform="rotate(-90 14 {:.1})">{}</text>"##,
            (LEFT + W - RIGHT) / 2.0,
            H - 5.0,
            esc(x_label),
            H / 2.0,
            H / 2.0,
            esc(y_label)
        );
        if let Some(l) = y2_label {
            let x = W - 12.0;
            let _ = write!(
                out,
                r##"<text x="{x}" y="{:.1}" font-size="12" text-anchor="middle" transform="rotate(90 {x} {:.1})">{}</text>"##,
                H / 2.0,
                H / 2.0,
                esc(l)
            );
        }
    }
}

/// Tick divisions that give round steps for a bound from [`nice_max`].
fn divisions(max: f64) -> usize {
    let mantissa = max / 10f64.powf(max.log10().floor());
    if (mantissa - 2.0).abs() < 1e-9 { 4 } else { 5 }
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 || v.abs() >= 10.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn svg_open(out: &mut String, title: &str) {
    let _ = write!(
        out,
        r##"<figure><figcaption>{}</figcaption><svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{}" font-family="sans-serif">"##,
        esc(title),
        esc(title)
    );
}

fn legend(out: &mut String, entries: &[(&str, &str)]) {
    for (i, (name, colour)) in entries.iter().enumerate() {
        let x = LEFT + 10.0 + 150.0 * i as f64;
        let _ = write!(
            out,
            r##"<rect x="{x}" y="{}" width="12" height="4" fill="{colour}"/><text x="{}" y="{}" font-size="11">{}</text>"##,
            TOP + 10.0,
            x + 16.0,
            TOP + 15.0,
            esc(name)
        );
    }
}

fn polyline(out: &mut String, points: impl Iterator<Item = (f64, f64)>, colour: &str) {
    let pts: Vec<String> = points.map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    if pts.is_empty() {
        return;
    }
    let _ = write!(
        out,
        r##"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"##,
        pts.join(" ")
    );
}

fn latency_plot(out: &mut String, r: &Report) {
    svg_open(out, "End-to-end latency distribution (sender to receiver)");
    let buckets = &r.latency_ms_histogram;
    let top = buckets
        .iter()
        .rev()
        .find(|(_, n)| *n > 0)
        .map_or(1.0, |(ms, _)| *ms)
        .max(r.latency_ms_p99);
    let y_max = nice_max(buckets.iter().map(|(_, n)| *n).max().unwrap_or(1) as f64);
    let a = Axes {
        x_max: 10f64.powf(top.log10().ceil()).max(1.0),
        x_log_min: Some(0.1),
        y_max,
        y2_max: None,
    };
    a.draw(out, "latency (ms, logarithmic)", "packets", None);
    let mut lo = 0.0;
    for &(hi, n) in buckets {
        if n > 0 {
            let (x0, x1) = (a.x(lo), a.x(hi));
            let _ = write!(
                out,
                r##"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"/>"##,
                a.y(n as f64),
                (x1 - x0).max(1.0),
                a.y(0.0) - a.y(n as f64),
                COLOURS[0]
            );
        }
        lo = hi;
    }
    for (q, v, colour) in [
        ("p50", r.latency_ms_p50, COLOURS[2]),
        ("p99", r.latency_ms_p99, COLOURS[1]),
    ] {
        let x = a.x(v);
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{}" stroke="{colour}" stroke-dasharray="4 3"/><text x="{:.1}" y="{}" font-size="11" fill="{colour}">{q} {v:.2} ms</text>"##,
            H - BOTTOM,
            x + 3.0,
            TOP + 30.0 + if q == "p99" { 14.0 } else { 0.0 }
        );
    }
    out.push_str("</svg></figure>");
}

fn timeline_plot(out: &mut String, r: &Report) {
    svg_open(out, "CPU (percent of one core) and participants over time");
    let t = &r.timeline;
    let x_max = nice_max(t.last().map_or(1.0, |s| s.t_s));
    let cpu_max = t
        .iter()
        .flat_map(|s| [s.sfu_cpu_pct, s.signaling_cpu_pct, Some(s.tool_cpu_pct)])
        .flatten()
        .fold(1.0f64, f64::max);
    let people = t.iter().map(|s| s.participants).max().unwrap_or(1) as f64;
    let a = Axes {
        x_max,
        x_log_min: None,
        y_max: nice_max(cpu_max),
        y2_max: Some(nice_max(people)),
    };
    a.draw(out, "time (s)", "CPU %", Some("participants"));
    polyline(
        out,
        t.iter().map(|s| (a.x(s.t_s), a.y2(s.participants as f64))),
        COLOURS[3],
    );
    polyline(
        out,
        t.iter()
            .filter_map(|s| Some((a.x(s.t_s), a.y(s.sfu_cpu_pct?)))),
        COLOURS[0],
    );
    polyline(
        out,
        t.iter()
            .filter_map(|s| Some((a.x(s.t_s), a.y(s.signaling_cpu_pct?)))),
        COLOURS[2],
    );
    polyline(
        out,
        t.iter().map(|s| (a.x(s.t_s), a.y(s.tool_cpu_pct))),
        COLOURS[1],
    );
    legend(
        out,
        &[
            ("SFU CPU", COLOURS[0]),
            ("signaling CPU", COLOURS[2]),
            ("load tool CPU", COLOURS[1]),
            ("participants", COLOURS[3]),
        ],
    );
    out.push_str("</svg></figure>");
}

fn joins_plot(out: &mut String, r: &Report) {
    svg_open(
        out,
        "Join times, fastest to slowest (request to first remote audio)",
    );
    let mut v = r.join_ms.clone();
    v.sort_by(f64::total_cmp);
    let a = Axes {
        x_max: nice_max(v.len().max(1) as f64),
        x_log_min: None,
        y_max: nice_max(v.last().copied().unwrap_or(1.0)),
        y2_max: None,
    };
    a.draw(out, "joiners", "join time (ms)", None);
    for (i, ms) in v.iter().enumerate() {
        let _ = write!(
            out,
            r##"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{}"/>"##,
            a.x(i as f64 + 0.5),
            a.y(*ms),
            COLOURS[0]
        );
    }
    for (q, val, colour) in [
        ("p50", r.join_ms_p50, COLOURS[2]),
        ("p95", r.join_ms_p95, COLOURS[1]),
    ] {
        let y = a.y(val);
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="{colour}" stroke-dasharray="4 3"/><text x="{}" y="{:.1}" font-size="11" fill="{colour}">{q} {val:.0} ms</text>"##,
            W - RIGHT,
            LEFT + 5.0,
            y - 3.0
        );
    }
    out.push_str("</svg></figure>");
}

fn steps_table(out: &mut String, r: &Report) {
    if r.steps.is_empty() {
        return;
    }
    out.push_str("<h2>Ramp steps</h2><table><tr><th>step</th><th>rooms</th><th>participants</th><th>join failures</th><th>loss %</th><th>latency p99 ms</th><th>SFU CPU %</th><th>verdict</th></tr>");
    for s in &r.steps {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.2}</td><td>{}</td><td>{}</td></tr>",
            s.step,
            s.rooms,
            s.participants,
            s.join_failures,
            s.loss_pct,
            s.latency_ms_p99,
            s.sfu_cpu_pct.map_or("n/a".into(), |c| format!("{c:.1}")),
            esc(s.broke.as_deref().unwrap_or("good"))
        );
    }
    out.push_str("</table>");
}

/// The whole page.
pub fn render(r: &Report) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let _ = write!(
        out,
        r##"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>MetaClinic load test: {}</title><style>body{{font-family:sans-serif;max-width:820px;margin:2em auto;color:#222}}pre{{background:#f6f8fa;padding:1em;overflow-x:auto}}figure{{margin:1.5em 0}}figcaption{{font-weight:bold;margin-bottom:.3em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:right}}</style></head><body><h1>MetaClinic load test: {}</h1><pre>{}</pre>"##,
        esc(&r.scenario),
        esc(&r.scenario),
        esc(&summary(r))
    );
    latency_plot(&mut out, r);
    timeline_plot(&mut out, r);
    joins_plot(&mut out, r);
    steps_table(&mut out, r);
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_round_up_to_readable_bounds() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(3.2), 5.0);
        assert_eq!(nice_max(101.0), 200.0);
        assert_eq!(nice_max(0.7), 1.0);
        assert_eq!(divisions(25.0), 5);
        assert_eq!(divisions(200.0), 4);
        assert_eq!(esc("<a&\">"), "&lt;a&amp;&quot;&gt;");
    }
}
