//! Writes the sample report in every format: `cargo run -p pvkit-report --example
//! render_sample -- <out-dir>` produces `results.{json,md,svg,png}` in `<out-dir>`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    std::fs::create_dir_all(&dir)?;
    let mut report = pvkit_report::sample::sample_report();
    report.compute_speedups();
    pvkit_report::write_json(&report, dir.join("results.json"))?;
    pvkit_report::write_markdown(&report, dir.join("results.md"))?;
    pvkit_report::write_svg(&report, dir.join("results.svg"))?;
    pvkit_report::write_png(&report, dir.join("results.png"))?;
    println!("wrote results.{{json,md,svg,png}} to {}", dir.display());
    Ok(())
}
