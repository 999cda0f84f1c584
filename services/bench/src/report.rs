//! One machine-readable line per figure: `key=value` pairs separated by spaces, values free of
//! spaces, so `grep`/`awk` (or a split on spaces and `=`) reads them.

use crate::drive::Figures;
use std::fmt::Write as _;

/// A target from the benchmark issue, judged on this run's figures (reported, never asserted).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// `ratio` at least this.
    RatioAtLeast(f64),
    /// `ratio` at most this.
    RatioAtMost(f64),
    /// `p99_ms` under this.
    P99UnderMs(f64),
    /// `value` at most this.
    ValueAtMost(f64),
}

pub(crate) struct Line {
    text: String,
    ratio: Option<f64>,
    p99_ms: Option<f64>,
    value: Option<f64>,
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

impl Line {
    pub(crate) fn new(scenario: &str, backend: &str) -> Self {
        Self { text: format!("scenario={scenario} backend={backend}"), ratio: None, p99_ms: None, value: None }
    }

    pub(crate) fn field(mut self, key: &str, value: impl std::fmt::Display) -> Self {
        let value = value.to_string().replace(char::is_whitespace, "_");
        let _ = write!(self.text, " {key}={value}");
        self
    }

    pub(crate) fn number(self, key: &str, value: f64) -> Self {
        self.field(key, fmt(value))
    }

    /// A measured quantity that a `ValueAtMost` target judges.
    pub(crate) fn value(mut self, key: &str, value: f64) -> Self {
        self.value = Some(value);
        self.number(key, value)
    }

    pub(crate) fn figures(mut self, f: &Figures) -> Self {
        self.p99_ms = Some(f.p99_ms());
        self.field("ops", f.ops)
            .number("ops_per_s", f.ops_per_s())
            .number("p50_ms", f.p50_ms())
            .number("p99_ms", f.p99_ms())
            .field("errors", f.errors)
    }

    pub(crate) fn ratio(mut self, baseline: &str, ratio: f64) -> Self {
        self.ratio = Some(ratio);
        self.field("baseline", baseline).number("ratio", ratio)
    }

    /// Ops/s against the baseline's ops/s.
    pub(crate) fn against(self, baseline: &str, figures: &Figures, base: &Figures) -> Self {
        let ratio = figures.ops_per_s() / base.ops_per_s().max(1e-9);
        self.ratio(baseline, ratio)
    }

    pub(crate) fn target(self, target: Target) -> Self {
        let (text, met) = match target {
            Target::RatioAtLeast(t) => (format!("ratio>={t}"), self.ratio.map(|r| r >= t)),
            Target::RatioAtMost(t) => (format!("ratio<={t}"), self.ratio.map(|r| r <= t)),
            Target::P99UnderMs(t) => (format!("p99_ms<{t}"), self.p99_ms.map(|p| p < t)),
            Target::ValueAtMost(t) => (format!("value<={t}"), self.value.map(|v| v <= t)),
        };
        let met = match met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "unmeasured",
        };
        self.field("target", text).field("met", met)
    }

    pub(crate) fn text(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_key_value_pairs_without_spaces_in_values() {
        let line = Line::new("seat_checkout", "redis")
            .field("note", "two words")
            .ratio("echo", 0.61)
            .target(Target::RatioAtLeast(0.5));
        assert_eq!(
            line.text(),
            "scenario=seat_checkout backend=redis note=two_words baseline=echo ratio=0.610 target=ratio>=0.5 met=yes"
        );
        let missed = Line::new("memory", "embedded").value("rss_mib", 31.5).target(Target::ValueAtMost(30.0));
        assert!(missed.text().ends_with("rss_mib=31.50 target=value<=30 met=NO"), "{}", missed.text());
    }
}
