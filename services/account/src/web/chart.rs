//! The usage chart, drawn on the server as SVG (no script): peak seats in use per day as bars,
//! the seats bought as a dashed line, and days with denied checkouts marked in red.

use licensing_domain::usage::DailyUsage;
use std::fmt::Write as _;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 40.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The chart of `days` for a license of `seats` seats, as an accessible inline SVG element.
pub(crate) fn peak_seats(days: &[DailyUsage], seats: i32) -> String {
    let top_value = days.iter().map(|d| d.peak_seats).max().unwrap_or(0).max(seats).max(1);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let y = |v: f64| TOP + plot_h - v / f64::from(top_value) * plot_h;
    let slot = plot_w / days.len().max(1) as f64;
    let denial_days = days.iter().filter(|d| d.denials > 0).count();
    let peak = days.iter().map(|d| d.peak_seats).max().unwrap_or(0);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="chart-title chart-desc" xmlns="http://www.w3.org/2000/svg"><title id="chart-title">Peak seats in use per day</title><desc id="chart-desc">{} days; highest peak {peak} of {seats} seats bought; days with denied checkouts: {denial_days}.</desc>"#,
        days.len()
    );
    // Grid lines and the value axis, at most five ticks.
    let step = (top_value as f64 / 5.0).ceil().max(1.0) as i32;
    let mut tick = 0;
    while tick <= top_value {
        let ty = y(f64::from(tick));
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{LEFT}" x2="{}" y1="{ty:.1}" y2="{ty:.1}"/><text x="{}" y="{:.1}" text-anchor="end">{tick}</text>"#,
            WIDTH - RIGHT,
            LEFT - 6.0,
            ty + 4.0
        );
        tick += step;
    }
    for (i, d) in days.iter().enumerate() {
        let x = LEFT + i as f64 * slot;
        let bar_top = y(f64::from(d.peak_seats));
        let label = format!(
            "{}: peak {} seat{}, {} checkout{}, {} denial{}",
            d.day,
            d.peak_seats,
            if d.peak_seats == 1 { "" } else { "s" },
            d.checkouts,
            if d.checkouts == 1 { "" } else { "s" },
            d.denials,
            if d.denials == 1 { "" } else { "s" }
        );
        let _ = write!(
            svg,
            r#"<g><title>{}</title><rect class="bar" x="{:.1}" y="{bar_top:.1}" width="{:.1}" height="{:.1}"/>"#,
            escape(&label),
            x + slot * 0.15,
            slot * 0.7,
            (TOP + plot_h - bar_top).max(0.0)
        );
        if d.denials > 0 {
            let _ = write!(
                svg,
                r#"<rect class="denied" x="{:.1}" y="{:.1}" width="{:.1}" height="6"/>"#,
                x + slot * 0.15,
                TOP - 14.0,
                slot * 0.7
            );
        }
        svg.push_str("</g>");
        if i % 7 == 0 || i + 1 == days.len() {
            let month_day = d.day.get(5..).unwrap_or(&d.day);
            let _ = write!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                x + slot / 2.0,
                HEIGHT - BOTTOM + 16.0,
                escape(month_day)
            );
        }
    }
    let limit = y(f64::from(seats));
    let _ = write!(
        svg,
        r#"<line class="axis" x1="{LEFT}" x2="{}" y1="{:.1}" y2="{:.1}"/><line class="limit" x1="{LEFT}" x2="{}" y1="{limit:.1}" y2="{limit:.1}"/>"#,
        WIDTH - RIGHT,
        TOP + plot_h,
        TOP + plot_h,
        WIDTH - RIGHT
    );
    let _ = write!(
        svg,
        r#"<g class="legend"><rect class="bar" x="{LEFT}" y="{:.1}" width="10" height="10"/><text x="{:.1}" y="{:.1}">peak seats in use</text><line class="limit" x1="{:.1}" x2="{:.1}" y1="{:.1}" y2="{:.1}"/><text x="{:.1}" y="{:.1}">{seats} seats bought</text><rect class="denied" x="{:.1}" y="{:.1}" width="10" height="6"/><text x="{:.1}" y="{:.1}">checkouts denied that day</text></g></svg>"#,
        HEIGHT - 14.0,
        LEFT + 14.0,
        HEIGHT - 5.0,
        LEFT + 150.0,
        LEFT + 175.0,
        HEIGHT - 9.0,
        HEIGHT - 9.0,
        LEFT + 180.0,
        HEIGHT - 5.0,
        LEFT + 290.0,
        HEIGHT - 12.0,
        LEFT + 304.0,
        HEIGHT - 5.0,
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(day: &str, peak: i32, denials: i64) -> DailyUsage {
        DailyUsage { day: day.into(), peak_seats: peak, seat_hours: 1.0, checkouts: 2, denials }
    }

    #[test]
    fn each_day_is_a_bar_with_its_figures_and_denied_days_are_marked() {
        let svg = peak_seats(&[day("2026-11-01", 2, 0), day("2026-11-02", 3, 4)], 3);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches(r#"class="bar""#).count(), 3, "two days and the legend");
        assert_eq!(svg.matches(r#"class="denied""#).count(), 2, "one denied day and the legend");
        assert!(svg.contains("2026-11-02: peak 3 seats, 2 checkouts, 4 denials"));
        assert!(svg.contains("highest peak 3 of 3 seats bought; days with denied checkouts: 1."));
        assert!(!svg.contains("style="), "no inline style: the CSP allows none");
    }

    #[test]
    fn an_empty_report_still_draws() {
        let svg = peak_seats(&[], 5);
        assert!(svg.contains("5 seats bought"));
    }
}
