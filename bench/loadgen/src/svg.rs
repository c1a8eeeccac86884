//! A plot of latency percentiles per system, one panel per concurrency level, written
//! as a self-contained SVG file.
//!
//! The x axis is logarithmic, because the systems span two orders of magnitude. Only
//! the generic `sans-serif` font family is named, so the file loads no fonts. Trusts
//! the measurements it is given.

use std::fmt::Write as _;

use crate::report::Run;

const WIDTH: f64 = 960.0;
const LABEL_WIDTH: f64 = 150.0;
const PLOT_LEFT: f64 = 170.0;
const PLOT_RIGHT: f64 = 920.0;
const ROW_HEIGHT: f64 = 22.0;
const PANEL_GAP: f64 = 54.0;
const TOP: f64 = 70.0;

/// Marker colours, one per percentile, dark enough for a white background.
const P50_COLOUR: &str = "#1f5fbf";
const P90_COLOUR: &str = "#2b8a3e";
const P99_COLOUR: &str = "#c92a2a";
const MAX_COLOUR: &str = "#555555";
const MEAN_COLOUR: &str = "#000000";

/// Renders the plot. Systems without a measurement at a level are left out of its panel.
pub fn latency_plot(run: &Run) -> String {
    let mut levels: Vec<usize> = run.cells.iter().map(|cell| cell.clients).collect();
    levels.dedup();
    let mut systems: Vec<&'static str> = Vec::new();
    for cell in &run.cells {
        if !systems.contains(&cell.system) {
            systems.push(cell.system);
        }
    }
    let values = run
        .cells
        .iter()
        .flat_map(|cell| [cell.latency.p50, cell.latency.mean, cell.latency.max])
        .filter(|value| *value > 0.0);
    let (low, high) = values.fold((f64::MAX, 0.0f64), |(low, high), value| {
        (low.min(value), high.max(value))
    });
    let (low, high) = if high > 0.0 {
        (decade_below(low), decade_above(high))
    } else {
        (100.0, 100_000.0)
    };
    let scale = LogScale { low, high };

    let panel_height = systems.len() as f64 * ROW_HEIGHT + 30.0;
    let height = TOP + levels.len() as f64 * (panel_height + PANEL_GAP) + 10.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(
        svg,
        "<rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{height}\" fill=\"#ffffff\"/>"
    );
    let _ = writeln!(
        svg,
        "<text x=\"{PLOT_LEFT}\" y=\"24\" font-size=\"15\" font-weight=\"bold\">\
         Latency per call of a script that only exits 0 (log scale)</text>"
    );
    legend(&mut svg);

    for (index, clients) in levels.iter().enumerate() {
        let top = TOP + index as f64 * (panel_height + PANEL_GAP);
        let client_word = if *clients == 1 { "client" } else { "clients" };
        let _ = writeln!(
            svg,
            "<text x=\"10\" y=\"{:.1}\" font-weight=\"bold\">{clients} concurrent {client_word}</text>",
            top - 8.0
        );
        let bottom = top + systems.len() as f64 * ROW_HEIGHT;
        grid(&mut svg, &scale, top, bottom);
        for (row, system) in systems.iter().enumerate() {
            let y = top + row as f64 * ROW_HEIGHT + ROW_HEIGHT / 2.0;
            let _ = writeln!(
                svg,
                "<text x=\"{LABEL_WIDTH}\" y=\"{:.1}\" text-anchor=\"end\">{system}</text>",
                y + 4.0
            );
            let Some(cell) = run.find(system, *clients) else {
                continue;
            };
            if cell.latency.p50 <= 0.0 {
                continue;
            }
            let latency = &cell.latency;
            let _ = writeln!(
                svg,
                "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#bbbbbb\" stroke-width=\"2\"/>",
                scale.x(latency.p50),
                scale.x(latency.max)
            );
            marker(&mut svg, Shape::Cross, scale.x(latency.max), y, MAX_COLOUR);
            marker(
                &mut svg,
                Shape::Triangle,
                scale.x(latency.p99),
                y,
                P99_COLOUR,
            );
            marker(
                &mut svg,
                Shape::Diamond,
                scale.x(latency.p90),
                y,
                P90_COLOUR,
            );
            marker(&mut svg, Shape::Circle, scale.x(latency.p50), y, P50_COLOUR);
            marker(&mut svg, Shape::Bar, scale.x(latency.mean), y, MEAN_COLOUR);
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// Maps microseconds to x on a log scale from `low` to `high`.
struct LogScale {
    low: f64,
    high: f64,
}

impl LogScale {
    fn x(&self, us: f64) -> f64 {
        let clamped = us.clamp(self.low, self.high);
        let share = (clamped.log10() - self.low.log10()) / (self.high.log10() - self.low.log10());
        PLOT_LEFT + share * (PLOT_RIGHT - PLOT_LEFT)
    }
}

fn decade_below(value: f64) -> f64 {
    10f64.powf(value.log10().floor())
}

fn decade_above(value: f64) -> f64 {
    10f64.powf(value.log10().ceil().max(value.log10().floor() + 1.0))
}

/// Draws vertical grid lines at 1, 2 and 5 times each power of ten, labelled below.
fn grid(svg: &mut String, scale: &LogScale, top: f64, bottom: f64) {
    let mut decade = scale.low;
    while decade < scale.high * 1.001 {
        for factor in [1.0, 2.0, 5.0] {
            let us = decade * factor;
            if us > scale.high * 1.001 {
                break;
            }
            let x = scale.x(us);
            let colour = if factor == 1.0 { "#cccccc" } else { "#eeeeee" };
            let _ = writeln!(
                svg,
                "<line x1=\"{x:.1}\" y1=\"{top:.1}\" x2=\"{x:.1}\" y2=\"{bottom:.1}\" stroke=\"{colour}\"/>"
            );
            let _ = writeln!(
                svg,
                "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\" fill=\"#444444\">{}</text>",
                bottom + 14.0,
                duration_label(us)
            );
        }
        decade *= 10.0;
    }
}

fn duration_label(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{} s", trim(us / 1_000_000.0))
    } else if us >= 1000.0 {
        format!("{} ms", trim(us / 1000.0))
    } else {
        format!("{} µs", trim(us))
    }
}

fn trim(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

enum Shape {
    Bar,
    Circle,
    Diamond,
    Triangle,
    Cross,
}

fn marker(svg: &mut String, shape: Shape, x: f64, y: f64, colour: &str) {
    let _ = match shape {
        Shape::Bar => writeln!(
            svg,
            "<path d=\"M{x:.1},{:.1} L{x:.1},{:.1}\" stroke=\"{colour}\" stroke-width=\"2\"/>",
            y - 7.0,
            y + 7.0
        ),
        Shape::Circle => writeln!(
            svg,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"4.5\" fill=\"{colour}\"/>"
        ),
        Shape::Diamond => writeln!(
            svg,
            "<path d=\"M{x:.1},{:.1} L{:.1},{y:.1} L{x:.1},{:.1} L{:.1},{y:.1} Z\" fill=\"{colour}\"/>",
            y - 5.0,
            x + 5.0,
            y + 5.0,
            x - 5.0
        ),
        Shape::Triangle => writeln!(
            svg,
            "<path d=\"M{x:.1},{:.1} L{:.1},{:.1} L{:.1},{:.1} Z\" fill=\"{colour}\"/>",
            y - 5.0,
            x + 5.0,
            y + 4.0,
            x - 5.0,
            y + 4.0
        ),
        Shape::Cross => writeln!(
            svg,
            "<path d=\"M{:.1},{:.1} L{:.1},{:.1} M{:.1},{:.1} L{:.1},{:.1}\" stroke=\"{colour}\" stroke-width=\"2\"/>",
            x - 4.0,
            y - 4.0,
            x + 4.0,
            y + 4.0,
            x - 4.0,
            y + 4.0,
            x + 4.0,
            y - 4.0
        ),
    };
}

fn legend(svg: &mut String) {
    let y = 46.0;
    let entries = [
        (Shape::Circle, P50_COLOUR, "p50"),
        (Shape::Diamond, P90_COLOUR, "p90"),
        (Shape::Triangle, P99_COLOUR, "p99"),
        (Shape::Cross, MAX_COLOUR, "max"),
        (Shape::Bar, MEAN_COLOUR, "mean"),
    ];
    for (index, (shape, colour, label)) in entries.into_iter().enumerate() {
        let x = PLOT_LEFT + index as f64 * 80.0;
        marker(svg, shape, x, y, colour);
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\">{label}</text>",
            x + 10.0,
            y + 4.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_scale_maps_ends_to_plot_edges() {
        let scale = LogScale {
            low: 100.0,
            high: 100_000.0,
        };
        assert_eq!(scale.x(100.0), PLOT_LEFT);
        assert_eq!(scale.x(100_000.0), PLOT_RIGHT);
        assert!((scale.x(1000.0) - (PLOT_LEFT + (PLOT_RIGHT - PLOT_LEFT) / 3.0)).abs() < 1e-9);
    }

    #[test]
    fn decades_enclose_value() {
        assert_eq!(decade_below(950.0), 100.0);
        assert_eq!(decade_above(950.0), 1000.0);
        assert_eq!(decade_above(1000.0), 10_000.0);
    }

    #[test]
    fn duration_labels_switch_to_ms() {
        assert_eq!(duration_label(500.0), "500 µs");
        assert_eq!(duration_label(2000.0), "2 ms");
        assert_eq!(duration_label(200.0), "200 µs");
        assert_eq!(duration_label(5_000_000.0), "5 s");
    }
}
