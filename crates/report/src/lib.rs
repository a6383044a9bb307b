//! Benchmark report: the results model of `pvkit bench` and its renderings.
//!
//! The VMM fills a [`Report`] (see [`model`] for the `results.json` schema), calls
//! [`Report::compute_speedups`], and then writes it out:
//!
//! - [`write_json`] / [`read_json`]: `results.json`, pretty-printed;
//! - [`render_markdown`] / [`write_markdown`]: header, one table per device, host baselines,
//!   exits per op by kind;
//! - [`write_svg`] / [`write_png`]: throughput and exits-per-op bar charts per device.
//!
//! [`sample::sample_report`] builds a realistic report for trying the renderers out.

pub mod chart;
pub mod json;
pub mod markdown;
pub mod model;
mod numfmt;
pub mod sample;

pub use chart::{render_svg, write_png, write_svg, ChartError};
pub use json::{from_json_str, read_json, to_json_string, write_json, JsonError};
pub use markdown::{render_markdown, write_markdown, MarkdownError};
pub use model::{
    now_rfc3339_utc, rfc3339_utc, Baseline, Case, Kind, LatencyMethod, ModelError, Platform,
    Report, WorkloadGroup, DEVICE_ORDER,
};
