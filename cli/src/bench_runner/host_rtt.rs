//! The `udp-echo-host-64B` cases: round trips the loopback peer originated and timed with
//! the host clock ([`pvkit_net::host_rtt`]). The guest's phase gives the ops and exits; the
//! peer's runs give the latency distribution and the byte-exact check of every echo.

use pvkit_abi::bench::{CaseId, Workload};
use pvkit_net::host_rtt::RttRun;
use pvkit_report::{Case, LatencyMethod};
use pvkit_vmm::bench::percentile;

use super::names;

/// Whether `case` is a host-timed round-trip case.
pub fn is_host_timed(case: CaseId) -> bool {
    case.workload == Workload::HostEcho64
}

/// Fills the latency (ns p50/p99) of every host-timed case in `cases` from `runs` (every boot's, pooled
/// per case), or fails the case: every request must have its echo, byte for byte, and the
/// requests must be the ops of the guest's phases.
pub fn apply(cases: &mut [Case], runs: &[RttRun]) {
    for c in cases.iter_mut().filter(|c| !c.is_failed()) {
        let mine: Vec<&RttRun> = runs
            .iter()
            .filter(|r| {
                CaseId::try_from(r.case).is_ok_and(|id| {
                    is_host_timed(id)
                        && names::case_label(id)
                            == format!("{}/{}/{}", c.device, c.variant, c.workload)
                })
            })
            .collect();
        if c.workload != names::workload_name(Workload::HostEcho64) {
            continue;
        }
        if let Err(why) = check(c.ops, &mine) {
            c.verified = false;
            c.failure = Some(why);
            continue;
        }
        let mut ns: Vec<u64> = mine
            .iter()
            .flat_map(|r| r.samples_ns.iter().copied())
            .collect();
        ns.sort_unstable();
        c.ns_per_op_p50 = Some(percentile(&ns, 50) as f64);
        c.ns_per_op_p99 = Some(percentile(&ns, 99) as f64);
        c.latency_method = Some(LatencyMethod::HostClock);
        c.latency_samples = ns.len() as u64;
        c.notes.push(format!(
            "round trips originated by the host's loopback peer, one request after each echo, \
             timed by the host clock (latency p50/p99; the guest cycle fields are the timed \
             loop's mean); {} echoes, all byte-exact; ops/exits include the guest's one \
             start datagram",
            ns.len()
        ));
    }
}

/// Why the runs do not prove `ops` exact round trips.
fn check(ops: u64, runs: &[&RttRun]) -> Result<(), String> {
    if runs.is_empty() {
        return Err("the host's loopback peer logged no round trips for the case".into());
    }
    let requests: u64 = runs.iter().map(|r| u64::from(r.requests)).sum();
    let samples: u64 = runs.iter().map(|r| r.samples_ns.len() as u64).sum();
    let exact: u64 = runs.iter().map(|r| u64::from(r.exact)).sum();
    let mismatched: u64 = runs.iter().map(|r| u64::from(r.mismatched)).sum();
    let lost: u64 = runs.iter().map(|r| u64::from(r.lost)).sum();
    if requests != ops || samples != ops || exact != ops || mismatched != 0 || lost != 0 {
        return Err(format!(
            "host round trips: {ops} ops, {requests} requests, {samples} echoes timed, \
             {exact} byte-exact, {mismatched} wrong, {lost} not delivered"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvkit_abi::bench::{Device, Variant};

    fn case(ops: u64) -> Case {
        let mut c = super::super::cases::failed_case(
            "net",
            names::variant_name(Variant::PvRing),
            names::workload_name(Workload::HostEcho64),
            String::new(),
        );
        c.failure = None;
        c.verified = true;
        c.ops = ops;
        c
    }

    fn run(n: u32, exact: u32) -> RttRun {
        RttRun {
            case: CaseId {
                device: Device::Net,
                variant: Variant::PvRing,
                workload: Workload::HostEcho64,
            }
            .to_u64(),
            requests: n,
            samples_ns: (1..=u64::from(n)).map(|i| i * 1000).collect(),
            exact,
            mismatched: n - exact,
            lost: 0,
        }
    }

    #[test]
    fn percentiles_come_from_the_host_samples() {
        let mut cs = [case(100)];
        apply(&mut cs, &[run(100, 100)]);
        assert!(!cs[0].is_failed(), "{:?}", cs[0].failure);
        assert_eq!(cs[0].latency_method, Some(LatencyMethod::HostClock));
        assert_eq!(cs[0].latency_samples, 100);
        let p50 = cs[0].ns_per_op_p50.unwrap();
        assert!((50_000.0..=51_000.0).contains(&p50), "{p50}");
        assert!(cs[0].ns_per_op_p99.unwrap() >= 99_000.0);
    }

    #[test]
    fn a_wrong_echo_or_a_missing_log_fails_the_case() {
        let mut cs = [case(10)];
        apply(&mut cs, &[run(10, 9)]);
        assert!(cs[0].failure.as_deref().unwrap().contains("1 wrong"));
        let mut cs = [case(10)];
        apply(&mut cs, &[]);
        assert!(cs[0].is_failed());
        let mut cs = [case(11)];
        apply(&mut cs, &[run(10, 10)]);
        assert!(cs[0].is_failed());
    }
}
