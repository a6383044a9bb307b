//! Benchmark report.
