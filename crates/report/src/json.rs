//! `results.json`: the [`Report`] serialized as pretty-printed JSON.
//!
//! Non-finite numbers are written as `null` (JSON has no `NaN`) and read back as `NaN`
//! (or `None` for optional fields).

use std::fs::File;
use std::io::{BufReader, BufWriter, Write as _};
use std::path::{Path, PathBuf};

use crate::model::Report;

/// Errors of the JSON module.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// Creating, writing or opening the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Serializing failed, or the file is not a valid report.
    #[error("{path}: {source}")]
    Json {
        /// The file involved.
        path: PathBuf,
        /// The underlying serde_json error (carries line and column when parsing).
        #[source]
        source: serde_json::Error,
    },
}

/// Writes `report` to `path` as pretty-printed JSON with a trailing newline.
pub fn write_json(report: &Report, path: impl AsRef<Path>) -> Result<(), JsonError> {
    let path = path.as_ref();
    let io = |source| JsonError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::create(path).map_err(io)?;
    let mut w = BufWriter::new(file);
    serde_json::to_writer_pretty(&mut w, report).map_err(|source| JsonError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    w.write_all(b"\n").map_err(io)?;
    w.flush().map_err(io)?;
    w.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)
}

/// Reads a report written by [`write_json`].
pub fn read_json(path: impl AsRef<Path>) -> Result<Report, JsonError> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|source| JsonError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_reader(BufReader::new(file)).map_err(|source| JsonError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Serializes `report` to a pretty-printed JSON string (what [`write_json`] writes).
pub fn to_json_string(report: &Report) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(report)
}

/// Parses a report from a JSON string.
pub fn from_json_str(s: &str) -> Result<Report, serde_json::Error> {
    serde_json::from_str(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::sample_report;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pvkit-report-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn round_trip_keeps_contract_field_names() {
        let mut report = sample_report();
        report.compute_speedups();
        let path = temp_path("results.json");
        write_json(&report, &path).unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        for key in [
            "platform",
            "cases",
            "baselines",
            "command",
            "started_at",
            "duration_s",
        ] {
            assert!(value.get(key).is_some(), "missing top-level {key}");
        }
        for key in [
            "kind",
            "hardware_virtualization",
            "cpu_model",
            "tsc_khz",
            "host_kernel",
            "pvkit_version",
            "git_commit",
            "abi_version",
        ] {
            assert!(
                value["platform"].get(key).is_some(),
                "missing platform.{key}"
            );
        }
        let cases = value["cases"].as_array().unwrap();
        assert_eq!(cases.len(), report.cases.len());
        for case in cases {
            for key in [
                "device",
                "variant",
                "kind",
                "workload",
                "ops",
                "bytes",
                "userspace_exits_per_op",
                "exits_by_kind",
                "in_kernel_notifications_per_op",
                "guest_cycles_per_op_median",
                "guest_cycles_per_op_p99",
                "ns_per_op",
                "ns_per_op_p50",
                "ns_per_op_p99",
                "throughput",
                "throughput_unit",
                "verified",
                "failure",
                "speedup",
                "notes",
            ] {
                assert!(case.get(key).is_some(), "missing case.{key}: {case}");
            }
            let kind = case["kind"].as_str().unwrap();
            assert!(kind == "emulated" || kind == "pv", "{kind}");
            assert!(case["ops"].is_u64());
            assert!(case["verified"].is_boolean());
        }
        let uart = cases
            .iter()
            .find(|c| c["variant"] == "uart" && c["workload"] == "write-4KiB")
            .unwrap();
        assert_eq!(uart["exits_by_kind"]["port-out 0x3f8"], 4096.0);
        assert_eq!(uart["speedup"], serde_json::Value::Null);
        assert_eq!(uart["latency_method"], "separate_pass");
        assert!(uart["guest_cycles_per_op"]
            .as_f64()
            .is_some_and(|c| c > 0.0));
        assert!(uart["latency_samples"].as_u64().is_some_and(|n| n > 0));
        for key in ["name", "value", "unit"] {
            assert!(value["baselines"][0].get(key).is_some(), "baseline.{key}");
        }

        let back = read_json(&path).unwrap();
        assert_eq!(back, report);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn non_finite_numbers_survive_as_nan() {
        let mut report = sample_report();
        report.cases[0].ns_per_op = f64::NAN;
        report.cases[0].throughput = f64::INFINITY;
        report.cases[0]
            .exits_by_kind
            .insert("weird".into(), f64::NAN);
        let text = to_json_string(&report).unwrap();
        let back = from_json_str(&text).unwrap();
        assert!(back.cases[0].ns_per_op.is_nan());
        assert!(back.cases[0].throughput.is_nan());
        assert!(back.cases[0].exits_by_kind["weird"].is_nan());
    }

    #[test]
    fn optional_fields_may_be_absent() {
        let report = sample_report();
        let mut value = serde_json::to_value(&report).unwrap();
        let case = value["cases"][0].as_object_mut().unwrap();
        for key in [
            "exits_by_kind",
            "ns_per_op_p50",
            "ns_per_op_p99",
            "failure",
            "speedup",
            "notes",
        ] {
            case.remove(key);
        }
        let back: Report = serde_json::from_value(value).unwrap();
        assert!(back.cases[0].exits_by_kind.is_empty());
        assert_eq!(back.cases[0].speedup, None);
    }

    #[test]
    fn errors_name_the_file() {
        let missing = temp_path("does-not-exist.json");
        let err = read_json(&missing).unwrap_err();
        assert!(matches!(err, JsonError::Io { .. }));
        assert!(err.to_string().contains("does-not-exist.json"));

        let bad = temp_path("bad.json");
        std::fs::write(&bad, "{\"cases\": 3}").unwrap();
        assert!(matches!(
            read_json(&bad).unwrap_err(),
            JsonError::Json { .. }
        ));
        std::fs::remove_file(&bad).unwrap();
    }
}
