//! The live progress bar (stderr, drawn only on a terminal): who has joined, then the
//! measured window with the key figures as they stand.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::window::Sample;

pub struct Progress {
    bar: ProgressBar,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl Progress {
    pub fn new() -> Progress {
        let bar = ProgressBar::new(0);
        bar.enable_steady_tick(Duration::from_millis(250));
        Progress { bar }
    }

    /// Joining: `total` participants to bring in.
    pub fn joining(&self, total: usize) {
        self.bar
            .set_style(style("{spinner} joining  [{bar:30}] {pos}/{len} {msg}"));
        self.bar.set_length(total as u64);
        self.bar.set_position(0);
    }

    pub fn joined(&self, in_call: usize, failures: usize) {
        self.bar.set_position(in_call as u64);
        self.bar.set_message(if failures > 0 {
            format!("({failures} failed)")
        } else {
            String::new()
        });
    }

    /// Measuring for `seconds`.
    pub fn measuring(&self, label: &str, seconds: u64) {
        self.bar.set_style(style(&format!(
            "{{spinner}} {label} [{{bar:30}}] {{pos}}/{{len}} s  {{msg}}"
        )));
        self.bar.set_length(seconds);
        self.bar.set_position(0);
    }

    /// The figures so far: loss from the clients, CPU from the last sample. (Latency is
    /// merged once at the end: merging histograms stalls the participants' threads.)
    pub fn figures(&self, elapsed_s: u64, loss_pct: f64, last: Option<&Sample>) {
        self.bar.set_position(elapsed_s);
        let cpu = |v: Option<f64>| v.map_or("n/a".into(), |c| format!("{c:.0}%"));
        let (people, sfu, sig, tool) = match last {
            Some(s) => (
                s.participants,
                cpu(s.sfu_cpu_pct),
                cpu(s.signaling_cpu_pct),
                format!("{:.0}%", s.tool_cpu_pct),
            ),
            None => (0, "n/a".into(), "n/a".into(), "n/a".into()),
        };
        self.bar.set_message(format!(
            "{people} in call | loss {loss_pct:.2}% | CPU SFU {sfu} signaling {sig} tool {tool}"
        ));
    }

    /// A line above the bar (on stderr as is when there is no terminal to draw on).
    pub fn println(&self, line: &str) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}
