//! Charts of a [`Report`]: an SVG (and a PNG) with, for every device, a throughput panel
//! and a userspace-exits-per-op panel side by side.
//!
//! Each panel is a grouped horizontal bar chart on a logarithmic axis (emulated and
//! paravirtual devices differ by 100× and more): one group per workload, one bar per variant,
//! emulated variants in warm colours and paravirtual ones in cool colours. Throughput bars
//! are labelled with their value and the speedup over the emulated baseline; exit bars with
//! the count. Zero exits (undefined on a log axis) are shown as a labelled diamond at the
//! left edge; failed cases show `FAILED` instead of a bar.
//!
//! Text is laid out (and, for the PNG, rasterised) with the DejaVu Sans font embedded in the
//! binary, so no system font libraries or font files are needed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

use crate::model::{Case, Kind, Report, WorkloadGroup};
use crate::numfmt;

/// Errors of the chart module.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    /// The embedded font could not be registered with the text renderer.
    #[error("cannot load the embedded chart font")]
    Font,
    /// Drawing the chart failed.
    #[error("drawing the chart failed: {0}")]
    Draw(String),
    /// Writing the output file failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file that could not be written.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Encoding the PNG failed.
    #[error("cannot encode {path} as PNG: {source}")]
    Png {
        /// The file being written.
        path: PathBuf,
        /// The underlying encoder error.
        #[source]
        source: png::EncodingError,
    },
}

/// Width of the whole figure, in pixels.
const WIDTH: u32 = 1600;
/// Height of the title block above the legend (title, platform line).
const TITLE_H: u32 = 72;
/// Height of one legend line.
const LEGEND_LINE_H: u32 = 24;
/// Space between the legend and the first panel.
const LEGEND_GAP: u32 = 16;
/// Height of one bar (or workload heading) slot.
const SLOT_H: u32 = 24;
/// Vertical space of a panel besides its slots: caption, margins, x-axis labels.
const PANEL_EXTRA_H: u32 = 104;
/// Height of the footer with the reading notes.
const FOOTER_H: u32 = 30;
/// Bounds of the space for the variant names left of each panel.
const Y_LABEL_AREA: (u32, u32) = (60, 260);
/// Units of the y axis per slot.
const SLOT_UNITS: i32 = 100;
/// Font family registered with the embedded font.
const FONT: &str = "sans-serif";

/// Renders the report as an SVG document and returns it.
pub fn render_svg(report: &Report) -> Result<String, ChartError> {
    ensure_font()?;
    let size = figure_size(report);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        draw(&root, report).map_err(draw_error)?;
        root.present().map_err(draw_error)?;
    }
    Ok(svg)
}

/// Renders the report as an SVG file at `path` (see the module documentation for the layout).
pub fn write_svg(report: &Report, path: impl AsRef<Path>) -> Result<(), ChartError> {
    let path = path.as_ref();
    let svg = render_svg(report)?;
    std::fs::write(path, svg).map_err(|source| ChartError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Renders the same chart as [`write_svg`] as a PNG file at `path`.
pub fn write_png(report: &Report, path: impl AsRef<Path>) -> Result<(), ChartError> {
    let path = path.as_ref();
    ensure_font()?;
    let (w, h) = figure_size(report);
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        draw(&root, report).map_err(draw_error)?;
        root.present().map_err(draw_error)?;
    }
    let png_error = |source| ChartError::Png {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(path).map_err(|source| ChartError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(png_error)?;
    writer.write_image_data(&rgb).map_err(png_error)?;
    writer.finish().map_err(png_error)
}

fn draw_error<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> ChartError {
    ChartError::Draw(e.to_string())
}

/// Registers the embedded DejaVu Sans with plotters' `ab_glyph` text renderer, once.
fn ensure_font() -> Result<(), ChartError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
            && plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold()).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(ChartError::Font)
    }
}

/// The devices to draw and their slot counts (one per workload heading, one per case).
fn device_slots(report: &Report) -> Vec<(&str, Vec<WorkloadGroup<'_>>, u32)> {
    report
        .devices()
        .into_iter()
        .map(|d| {
            let groups = report.workload_groups(d);
            let slots = groups.iter().map(|g| 1 + g.cases.len() as u32).sum();
            (d, groups, slots)
        })
        .collect()
}

fn panel_height(slots: u32) -> u32 {
    PANEL_EXTRA_H + slots * SLOT_H
}

fn figure_size(report: &Report) -> (u32, u32) {
    let rows: u32 = device_slots(report)
        .iter()
        .map(|(_, _, slots)| panel_height(*slots))
        .sum();
    let rows = rows.max(panel_height(1));
    (WIDTH, header_height(&Colors::new(report)) + rows + FOOTER_H)
}

fn header_height(colors: &Colors) -> u32 {
    let lines = legend_layout(colors)
        .iter()
        .map(|item| item.line + 1)
        .max()
        .unwrap_or(1);
    TITLE_H + lines * LEGEND_LINE_H + LEGEND_GAP
}

fn legend_font() -> FontDesc<'static> {
    (FONT, 15).into_font()
}

fn legend_title_font() -> FontDesc<'static> {
    (FONT, 15, FontStyle::Bold).into_font()
}

/// One legend entry, placed.
struct LegendItem<'a> {
    /// Left edge, in pixels.
    x: i32,
    /// Legend line, from 0.
    line: u32,
    /// What to draw.
    entry: LegendEntry<'a>,
}

enum LegendEntry<'a> {
    /// "emulated:" / "paravirtual:".
    Title(&'static str),
    /// A colour swatch and a variant name.
    Swatch(RGBColor, &'a str),
    /// Blank space between the emulated and the paravirtual part.
    Spacer,
}

/// Places the legend entries, wrapping to a new line when the figure width is reached.
fn legend_layout(colors: &Colors) -> Vec<LegendItem<'_>> {
    let mut entries: Vec<(i32, LegendEntry<'_>)> = Vec::new();
    for (kind, title) in [(Kind::Emulated, "emulated:"), (Kind::Pv, "paravirtual:")] {
        let mut variants = colors
            .entries
            .iter()
            .filter(|(k, _, _)| *k == kind)
            .peekable();
        if variants.peek().is_none() {
            continue;
        }
        let title_w = text_width(title, &legend_title_font()) + 10;
        entries.push((title_w, LegendEntry::Title(title)));
        for (_, variant, color) in variants {
            let w = 20 + text_width(variant, &legend_font()) + 18;
            entries.push((w, LegendEntry::Swatch(*color, variant)));
        }
        entries.push((24, LegendEntry::Spacer));
    }
    let (left, right) = (20i32, WIDTH as i32 - 20);
    let (mut x, mut line) = (left, 0u32);
    let mut items = Vec::with_capacity(entries.len());
    for (width, entry) in entries {
        if x + width > right && x > left {
            x = left;
            line += 1;
        }
        items.push(LegendItem { x, line, entry });
        x += width;
    }
    items
}

/// Warm colours for emulated variants.
const EMULATED_PALETTE: [RGBColor; 4] = [
    RGBColor(217, 95, 2),
    RGBColor(240, 160, 40),
    RGBColor(165, 42, 42),
    RGBColor(230, 110, 120),
];
/// Cool colours for paravirtual variants.
const PV_PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(106, 61, 154),
    RGBColor(23, 190, 207),
    RGBColor(0, 90, 140),
    RGBColor(120, 170, 60),
    RGBColor(150, 120, 220),
    RGBColor(0, 128, 128),
    RGBColor(70, 70, 160),
    RGBColor(90, 200, 150),
];
const FAILED_COLOR: RGBColor = RGBColor(200, 0, 0);
const GRID_TEXT: RGBColor = RGBColor(60, 60, 60);

/// A stable colour per (kind, variant), in order of first appearance.
struct Colors {
    entries: Vec<(Kind, String, RGBColor)>,
}

impl Colors {
    fn new(report: &Report) -> Self {
        let mut entries: Vec<(Kind, String, RGBColor)> = Vec::new();
        for device in report.devices() {
            for group in report.workload_groups(device) {
                for case in group.cases {
                    if entries
                        .iter()
                        .any(|(k, v, _)| *k == case.kind && *v == case.variant)
                    {
                        continue;
                    }
                    let n = entries.iter().filter(|(k, _, _)| *k == case.kind).count();
                    let color = match case.kind {
                        Kind::Emulated => EMULATED_PALETTE[n % EMULATED_PALETTE.len()],
                        Kind::Pv => PV_PALETTE[n % PV_PALETTE.len()],
                    };
                    entries.push((case.kind, case.variant.clone(), color));
                }
            }
        }
        Colors { entries }
    }

    fn of(&self, case: &Case) -> RGBColor {
        self.entries
            .iter()
            .find(|(k, v, _)| *k == case.kind && *v == case.variant)
            .map(|(_, _, c)| *c)
            .unwrap_or(RGBColor(128, 128, 128))
    }
}

type DrawResult<E> = Result<(), DrawingAreaErrorKind<E>>;

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    report: &Report,
) -> DrawResult<DB::ErrorType> {
    root.fill(&WHITE)?;
    let colors = Colors::new(report);
    let (_, height) = root.dim_in_pixel();
    let header_h = header_height(&colors);
    let (header, rest) = root.split_vertically(header_h);
    let (body, footer) = rest.split_vertically(height.saturating_sub(header_h + FOOTER_H));
    draw_header(&header, report, &colors)?;
    draw_footer(&footer)?;

    let devices = device_slots(report);
    if devices.is_empty() {
        body.draw(&Text::new(
            "no benchmark cases in this report",
            (40, 40),
            (FONT, 18).into_font().color(&GRID_TEXT),
        ))?;
        return Ok(());
    }
    let mut breaks = Vec::new();
    let mut y = 0;
    for (_, _, slots) in devices.iter().take(devices.len() - 1) {
        y += panel_height(*slots);
        breaks.push(y);
    }
    // One label-area width for all panels, so that their axes line up.
    let label_desc = (FONT, 13).into_font();
    let y_label_area = report
        .cases
        .iter()
        .map(|c| text_width(&c.variant, &label_desc).max(0) as u32 + 18)
        .max()
        .unwrap_or(0)
        .clamp(Y_LABEL_AREA.0, Y_LABEL_AREA.1);
    let rows = body.split_by_breakpoints::<u32, u32, _, _>([], breaks);
    for ((device, groups, slots), row) in devices.iter().zip(rows) {
        let (left, right) = row.split_horizontally(WIDTH / 2);
        for (area, metric) in [(left, Metric::Throughput), (right, Metric::Exits)] {
            draw_panel(&area, device, groups, *slots, metric, &colors, y_label_area)?;
        }
    }
    Ok(())
}

fn draw_header<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    report: &Report,
    colors: &Colors,
) -> DrawResult<DB::ErrorType> {
    let p = &report.platform;
    area.draw(&Text::new(
        "pvkit: emulated vs paravirtual devices",
        (20, 12),
        (FONT, 26, FontStyle::Bold).into_font().color(&BLACK),
    ))?;
    let mode = if p.is_software_virtualization() {
        "software virtualization: guest ring 0 is interpreted; exit counts are the primary metric"
    } else {
        "hardware KVM"
    };
    let line = format!(
        "{} ({mode})  ·  {}  ·  TSC {}  ·  pvkit {} ({})  ·  ABI {}  ·  {}",
        p.kind,
        p.cpu_model,
        tsc_label(p.tsc_khz),
        p.pvkit_version,
        p.git_commit,
        p.abi_version,
        report.started_at
    );
    let platform_font = (FONT, 15).into_font();
    area.draw(&Text::new(
        fit(&line, &platform_font, WIDTH as i32 - 40),
        (20, 46),
        platform_font.color(&GRID_TEXT),
    ))?;

    for item in legend_layout(colors) {
        let y = (TITLE_H + item.line * LEGEND_LINE_H) as i32;
        match item.entry {
            LegendEntry::Title(title) => {
                area.draw(&Text::new(
                    title,
                    (item.x, y),
                    legend_title_font().color(&BLACK),
                ))?;
            }
            LegendEntry::Spacer => {}
            LegendEntry::Swatch(color, variant) => {
                area.draw(&Rectangle::new(
                    [(item.x, y), (item.x + 14, y + 14)],
                    color.filled(),
                ))?;
                area.draw(&Text::new(
                    variant,
                    (item.x + 20, y),
                    legend_font().color(&BLACK),
                ))?;
            }
        }
    }
    Ok(())
}

/// The TSC rate for the header, in GHz with three decimals: `2_596_000` kHz → `"2.596 GHz"`
/// (in MHz with a thousands separator it read as "2.596 MHz").
fn tsc_label(tsc_khz: u64) -> String {
    if tsc_khz == 0 {
        return "unknown".into();
    }
    format!("{:.3} GHz", tsc_khz as f64 / 1e6)
}

fn draw_footer<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>) -> DrawResult<DB::ErrorType> {
    area.draw(&Text::new(
        "Log axes; k = 10³, M = 10⁶, G = 10⁹. Throughput: timed loops with no per-operation \
         clock read (latency p50/p99, from a separate pass, are in results.md). Labels: value · \
         speedup vs the emulated variant.  ◆ = 0 userspace exits.  FAILED = verification \
         failed, no number reported.",
        (20, 6),
        (FONT, 13).into_font().color(&GRID_TEXT),
    ))
}

/// Width of `text` in pixels as laid out with the embedded font (a rough estimate if the
/// font is unavailable).
fn text_width(text: &str, font: &FontDesc<'_>) -> i32 {
    font.box_size(text)
        .map(|(w, _)| w as i32)
        .unwrap_or_else(|_| (text.chars().count() as f64 * font.get_size() * 0.6) as i32)
}

/// `text`, cut with an ellipsis so that it is at most `max_width` pixels wide.
fn fit(text: &str, font: &FontDesc<'_>, max_width: i32) -> String {
    if text_width(text, font) <= max_width {
        return text.to_string();
    }
    let mut chars: Vec<char> = text.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let candidate: String = chars.iter().chain(std::iter::once(&'…')).collect();
        if text_width(&candidate, font) <= max_width {
            return candidate;
        }
    }
    String::new()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Metric {
    Throughput,
    Exits,
}

impl Metric {
    fn value(self, case: &Case) -> f64 {
        match self {
            Metric::Throughput => case.throughput,
            Metric::Exits => case.userspace_exits_per_op,
        }
    }

    /// The label right of a bar.
    fn label(self, case: &Case) -> String {
        match self {
            // SI prefixes: "3.08k IOPS", not "3,080 IOPS" (whose comma, rasterised, reads
            // as a decimal point).
            Metric::Throughput => {
                let value = format!("{} {}", numfmt::si(case.throughput), case.throughput_unit);
                match (case.kind, case.speedup) {
                    (_, Some(s)) => format!("{value}  ·  {}×", numfmt::si(s)),
                    (Kind::Emulated, None) => format!("{value}  ·  baseline"),
                    (Kind::Pv, None) => value,
                }
            }
            // Exit counts are exact: every digit, grouped by a narrow space.
            Metric::Exits => numfmt::num_with(case.userspace_exits_per_op, numfmt::THIN),
        }
    }
}

/// One row of a panel: a workload heading or a case.
enum Slot<'a> {
    Heading(&'a WorkloadGroup<'a>),
    Case(&'a Case),
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    device: &str,
    groups: &[WorkloadGroup<'_>],
    n_slots: u32,
    metric: Metric,
    colors: &Colors,
    y_label_area: u32,
) -> DrawResult<DB::ErrorType> {
    let slots: Vec<Slot<'_>> = groups
        .iter()
        .flat_map(|g| {
            std::iter::once(Slot::Heading(g)).chain(g.cases.iter().map(|c| Slot::Case(c)))
        })
        .collect();
    // The y axis counts in hundredths of a slot (plotters formats integer axes with custom
    // key points, not float ones): slot i, from the top, is centred at (n - i) * 100 - 50.
    let n = n_slots as i32;
    let center = |i: usize| (n - i as i32) * SLOT_UNITS - SLOT_UNITS / 2;

    // Axis range: a power of ten below the smallest positive value, and room right of the
    // longest bar for its label.
    let label_desc = (FONT, 13).into_font();
    let shown = slots.iter().filter_map(|s| match s {
        Slot::Case(c) if !c.is_failed() => Some(*c),
        _ => None,
    });
    let positive: Vec<f64> = shown
        .clone()
        .map(|c| metric.value(c))
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let min = positive.iter().copied().fold(f64::INFINITY, f64::min);
    let max = positive.iter().copied().fold(0.0, f64::max);
    let (min, max) = if positive.is_empty() {
        (1.0, 10.0)
    } else {
        (min, max)
    };
    let lo = 10f64.powf((min * 0.5).log10().floor());
    let (area_w, _) = area.dim_in_pixel();
    let plot_w = (area_w as f64 - y_label_area as f64 - 40.0).max(100.0);
    let label_w = shown
        .map(|c| text_width(&metric.label(c), &label_desc))
        .max()
        .unwrap_or(0)
        .max(60) as f64
        + 14.0;
    let room = (label_w / plot_w).min(0.6);
    let decades = (max / lo).log10().max(1.0) / (1.0 - room);
    let hi = 10f64.powf((lo.log10() + decades).ceil());

    let titles = match metric {
        Metric::Throughput => (
            format!("{device}: throughput"),
            "throughput (log scale; unit per workload)",
        ),
        Metric::Exits => (
            format!("{device}: userspace exits per op"),
            "userspace exits per op (log scale)",
        ),
    };
    let slot_labels: Vec<String> = slots
        .iter()
        .map(|s| match s {
            Slot::Case(c) => c.variant.clone(),
            Slot::Heading(_) => String::new(),
        })
        .collect();
    let key_points: Vec<i32> = (0..slots.len())
        .filter(|i| matches!(slots[*i], Slot::Case(_)))
        .map(center)
        .collect();
    let y_label = |y: &i32| {
        usize::try_from(n - 1 - y.div_euclid(SLOT_UNITS))
            .ok()
            .and_then(|i| slot_labels.get(i).cloned())
            .unwrap_or_default()
    };
    let x_label = |x: &f64| numfmt::si(*x);

    let mut chart = ChartBuilder::on(area)
        .caption(
            titles.0.as_str(),
            (FONT, 19, FontStyle::Bold).into_font().color(&BLACK),
        )
        .margin_top(10)
        .margin_left(14)
        .margin_right(26)
        .margin_bottom(6)
        .x_label_area_size(48)
        .y_label_area_size(y_label_area)
        .build_cartesian_2d(
            (lo..hi).log_scale(),
            (0..n * SLOT_UNITS).with_key_points(key_points),
        )?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_labels(12)
        .x_label_formatter(&x_label)
        .y_labels(slots.len().max(1))
        .y_label_formatter(&y_label)
        .x_desc(titles.1)
        .label_style((FONT, 13).into_font().color(&GRID_TEXT))
        .axis_desc_style((FONT, 14).into_font().color(&GRID_TEXT))
        .light_line_style(RGBColor(242, 242, 242))
        .bold_line_style(RGBColor(205, 205, 205))
        .draw()?;

    let heading_font = (FONT, 14, FontStyle::Bold)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let label_font = label_desc
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let failed_font = (FONT, 13, FontStyle::Bold)
        .into_font()
        .color(&FAILED_COLOR)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let half_bar = SLOT_UNITS * 36 / 100;

    for (i, slot) in slots.iter().enumerate() {
        let y = center(i);
        match slot {
            Slot::Heading(group) => {
                let units: Vec<&str> = group.cases.iter().map(|c| c.throughput_unit.as_str()).fold(
                    Vec::new(),
                    |mut acc, u| {
                        if !acc.contains(&u) {
                            acc.push(u);
                        }
                        acc
                    },
                );
                let text = match metric {
                    Metric::Throughput if !units.is_empty() => {
                        format!("{}  [{}]", group.workload, units.join(", "))
                    }
                    _ => group.workload.to_string(),
                };
                chart.draw_series(std::iter::once(
                    EmptyElement::at((lo, y)) + Text::new(text, (6, 0), heading_font.clone()),
                ))?;
            }
            Slot::Case(case) if case.is_failed() => {
                let text = match (metric, case.failure_reason()) {
                    (Metric::Throughput, Some(reason)) => {
                        format!("FAILED: {}", truncate(reason, 70))
                    }
                    _ => "FAILED".to_string(),
                };
                chart.draw_series(std::iter::once(
                    EmptyElement::at((lo, y)) + Text::new(text, (6, 0), failed_font.clone()),
                ))?;
            }
            Slot::Case(case) => {
                let value = metric.value(case);
                let color = colors.of(case);
                if value.is_finite() && value > 0.0 {
                    chart.draw_series(std::iter::once(Rectangle::new(
                        [(lo, y - half_bar), (value, y + half_bar)],
                        color.filled(),
                    )))?;
                    chart.draw_series(std::iter::once(
                        EmptyElement::at((value, y))
                            + Text::new(metric.label(case), (6, 0), label_font.clone()),
                    ))?;
                } else if value == 0.0 {
                    // log(0) is undefined: a diamond at the axis, labelled.
                    let text = match metric {
                        Metric::Exits => "0 (no exits)".to_string(),
                        Metric::Throughput => format!("0 {}", case.throughput_unit),
                    };
                    chart.draw_series(std::iter::once(
                        EmptyElement::at((lo, y))
                            + Polygon::new(vec![(8, -7), (15, 0), (8, 7), (1, 0)], color.filled())
                            + Text::new(text, (21, 0), label_font.clone()),
                    ))?;
                } else {
                    chart.draw_series(std::iter::once(
                        EmptyElement::at((lo, y)) + Text::new("n/a", (6, 0), label_font.clone()),
                    ))?;
                }
            }
        }
    }
    Ok(())
}

/// `s` cut to at most `max` characters, with an ellipsis if cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::sample_report;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pvkit-chart-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn svg_for_sample_report() {
        let mut report = sample_report();
        report.compute_speedups();
        let path = temp_path("results.svg");
        write_svg(&report, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.trim_start().starts_with("<svg"), "{}", &svg[..80]);
        assert!(svg.trim_end().ends_with("</svg>"));
        for title in [
            "console: throughput",
            "block: throughput",
            "clock: throughput",
            "console: userspace exits per op",
            "block: userspace exits per op",
            "clock: userspace exits per op",
        ] {
            assert!(svg.contains(title), "missing {title}");
        }
        assert!(svg.contains("FAILED: read-back mismatch"));
        assert!(svg.contains("0 (no exits)"));
        assert!(svg.contains("8\u{202f}192"));
        assert!(svg.contains("baseline"));
        let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        std::fs::remove_file(&path).unwrap();
    }

    /// Every text of an SVG chart.
    fn texts(svg: &str) -> Vec<String> {
        let doc = roxmltree::Document::parse(svg).expect("well-formed XML");
        doc.descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .map(|t| t.trim().to_string())
            .collect()
    }

    /// Reads a label number the way a reader does: `.` is the decimal point, a narrow space
    /// groups thousands, a k/M/G/T suffix scales. `None` for anything else (a comma, say).
    fn read_number(s: &str) -> Option<f64> {
        let s = s.replace(numfmt::THIN, "");
        let (digits, scale) = match s.chars().last()? {
            'k' => (&s[..s.len() - 1], 1e3),
            'M' => (&s[..s.len() - 1], 1e6),
            'G' => (&s[..s.len() - 1], 1e9),
            'T' => (&s[..s.len() - 1], 1e12),
            _ => (s.as_str(), 1.0),
        };
        if !digits.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return None;
        }
        digits.parse::<f64>().ok().map(|v| v * scale)
    }

    fn close(read: f64, value: f64) -> bool {
        (read - value).abs() <= value.abs() * 0.006
    }

    #[test]
    fn header_gives_the_tsc_rate_in_the_right_unit() {
        let mut report = sample_report();
        report.platform.tsc_khz = 2_596_000;
        let texts = texts(&render_svg(&report).unwrap());
        let line = texts
            .iter()
            .find(|t| t.contains("TSC "))
            .expect("TSC in the header");
        let rate = line.split("TSC ").nth(1).unwrap();
        let (number, unit) = rate.split_once(' ').unwrap();
        let hz = read_number(number).unwrap()
            * match &unit[..3] {
                "GHz" => 1e9,
                "MHz" => 1e6,
                "kHz" => 1e3,
                other => panic!("unit {other}"),
            };
        assert!(close(hz, 2.596e9), "{line}");
    }

    #[test]
    fn bar_labels_read_back_as_their_values() {
        let mut report = sample_report();
        // Values whose thousands a separator would have to show.
        report.cases[0].throughput = 3080.0;
        report.cases[1].throughput = 40_865_983.0;
        report.cases[2].userspace_exits_per_op = 526_347.0;
        report.compute_speedups();
        let texts = texts(&render_svg(&report).unwrap());
        let mut checked = 0;
        for case in report.cases.iter().filter(|c| !c.is_failed()) {
            // "<value> <unit>  ·  <speedup>×" or "…  ·  baseline".
            let unit = format!(" {}", case.throughput_unit);
            if case.throughput > 0.0 {
                let label = texts
                    .iter()
                    .find(|t| *t == &Metric::Throughput.label(case))
                    .unwrap_or_else(|| panic!("no label for {case:?}"));
                let (value, rest) = label.split_once(unit.as_str()).unwrap();
                let read = read_number(value).unwrap_or_else(|| panic!("unreadable {label}"));
                assert!(
                    close(read, case.throughput),
                    "{label} vs {}",
                    case.throughput
                );
                if let Some(s) = case.speedup {
                    let sp = rest.trim_start_matches("  ·  ").trim_end_matches('×');
                    let read = read_number(sp).unwrap_or_else(|| panic!("unreadable {label}"));
                    assert!(close(read, s), "{label} vs speedup {s}");
                }
                checked += 1;
            }
            let exits = case.userspace_exits_per_op;
            if exits > 0.0 {
                let label = Metric::Exits.label(case);
                assert!(texts.contains(&label), "no exit label {label}");
                let read = read_number(&label).unwrap_or_else(|| panic!("unreadable {label}"));
                assert!(close(read, exits), "{label} vs {exits}");
            }
        }
        assert!(checked >= 10, "{checked}");
        assert!(texts.iter().any(|t| t.starts_with("3.08k ")), "{texts:?}");
        assert!(texts.iter().any(|t| t.starts_with("40.9M ")), "{texts:?}");
        assert!(texts.iter().any(|t| t == "526\u{202f}347"), "{texts:?}");
    }

    #[test]
    fn awkward_text_is_escaped_and_long_names_fit() {
        let mut report = sample_report();
        report.platform.cpu_model = "A <very> long & \"quoted\" CPU model name ".repeat(8);
        report.cases[0].failure = Some("status <0x51> & DRQ 'never' set".into());
        for (i, case) in report.cases.iter_mut().enumerate() {
            case.variant = format!("{}-with-a-much-longer-name-{i}", case.variant);
        }
        report.compute_speedups();
        let svg = render_svg(&report).unwrap();
        roxmltree::Document::parse(&svg).expect("well-formed XML");
        assert!(svg.contains("status &lt;0x51&gt; &amp; DRQ"));
        assert!(svg.contains("…"), "over-long platform line is cut");
    }

    #[test]
    fn png_for_sample_report() {
        let mut report = sample_report();
        report.compute_speedups();
        let path = temp_path("results.png");
        write_png(&report, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn degenerate_reports_still_render() {
        let mut report = sample_report();
        report.cases.clear();
        assert!(render_svg(&report).unwrap().contains("no benchmark cases"));

        let mut report = sample_report();
        for case in &mut report.cases {
            case.verified = false;
        }
        let svg = render_svg(&report).unwrap();
        assert!(svg.contains("FAILED"));

        let mut report = sample_report();
        report.cases.truncate(1);
        report.cases[0].throughput = f64::NAN;
        report.cases[0].userspace_exits_per_op = 0.0;
        render_svg(&report).unwrap();
    }
}
