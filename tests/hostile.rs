//! The hostile guest (`guest-kernel/examples/hostile-os`) against the real VMM under KVM.
//!
//! Each scenario prints one `check <name> … ok|FAIL` line per observed outcome and exits
//! with the number of mismatches; these tests run it through the `pvkit` binary (the VMM
//! as deployed: seccomp on) and assert that every check passed, that the VMM stopped the
//! way the guest asked (its exit code, nothing on stderr), and that the disk image outside
//! the scratch sectors the guest may legitimately write is byte-for-byte unchanged (FNV-1a
//! 64 of the protected part, before and after). One more run goes through the library to
//! assert on the VMM's own records (exit ledger, op-log verification).
//!
//! Check counts per scenario are pinned, so a scenario that silently stops early fails.
//! docs/SECURITY.md lists the cases.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{code, pvkit};
use pvkit_abi::Hypercall;
use pvkit_vmm::bench::Verification;
use pvkit_vmm::devices::legacy::ne2000::{NetBackendConfig, NetConfig};
use pvkit_vmm::exit::ledger::ExitKind;
use pvkit_vmm::{run, DiskConfig, KernelSource, NicModel, StopReason, VmConfig};

/// The hostile guest ELF built with the VMM.
const HOSTILE: &str = common::HOSTILE_ELF;
/// Sectors `0..SCRATCH` may be written by the hostile scenarios (`hostile-os/src/disk.rs`,
/// `FIRST_PROTECTED`); everything after must not change.
const SCRATCH: u64 = 16;
/// Size of the test image: 2048 sectors.
const IMAGE: usize = 1 << 20;

/// Checks each scenario makes (pinned: a scenario that stops early fails the test).
/// ABI 2.0 added 4 hypercall checks (per-vCPU and flag rules of `RegisterRegion`); PV
/// spinlocks and steal time 12 (`hostile-os/src/spin.rs`).
const HYPERCALL_CHECKS: usize = 133;
const RING_CHECKS: usize = 65;
const DEVICE_CHECKS: usize = 78;
/// `case=net` (NE2000 nonsense, run with `--net`).
const NET_CHECKS: usize = 44;
/// `case=cpu-mem` (`VcpuUp`, `SendIpi`, `LockWait`/`LockKick`, the balloon; run with
/// `--vcpus 2`).
const CPU_MEM_CHECKS: usize = 85;
/// The calls `case=cpu-mem` makes (`hostile-os/src/cpumem.rs`), each one exit: `VcpuUp`,
/// `SendIpi` (13 refused + a storm of 500), `LockWait`, `LockKick` (3 refused + 2 storms of
/// 200 + 1), `BalloonInflate`, `BalloonDeflate`, `BalloonInfo`.
const CPU_MEM_CALLS: [(Hypercall, u64); 7] = [
    (Hypercall::VcpuUp, 10),
    (Hypercall::SendIpi, 513),
    (Hypercall::LockWait, 4),
    (Hypercall::LockKick, 404),
    (Hypercall::BalloonInflate, 29),
    (Hypercall::BalloonDeflate, 6),
    (Hypercall::BalloonInfo, 4),
];
/// Where `case=ap-garbage` starts vCPU 1: 4 GiB, canonical but outside the boot identity
/// map.
const AP_GARBAGE_RIP: u64 = 1 << 32;
/// `case=qirq` with the in-kernel irqchip and the PV NIC (`--net loopback --nic pv`):
/// `QueueInterrupt` nonsense (`hostile-os/src/qirq.rs`).
const QIRQ_CHECKS: usize = 30;
/// `case=qirq` without a NIC (no irqchip): every call `EOPNOTSUPP`.
const QIRQ_NOCHIP_CHECKS: usize = 6;

/// Whether the guests this file boots are built and KVM is usable (under CI: must be).
fn ready() -> bool {
    common::hostile_ready()
}

/// FNV-1a, 64 bits.
fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A fresh image of [`IMAGE`] bytes of a deterministic pseudo-random pattern (xorshift64),
/// so a stray write of zeros, of guest memory or of another sector shows.
fn image(name: &str) -> PathBuf {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut bytes = Vec::with_capacity(IMAGE);
    while bytes.len() < IMAGE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    common::temp_file(name, &bytes)
}

/// The checksum of the protected part of an image (everything after the scratch sectors).
fn protected_sum(img: &Path) -> u64 {
    let bytes = std::fs::read(img).expect("read the image");
    assert_eq!(bytes.len(), IMAGE, "the image changed size");
    fnv64(&bytes[(SCRATCH * 512) as usize..])
}

/// The `check` lines of a scenario's output: (name, passed).
fn checks(stdout: &str) -> Vec<(String, bool)> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("check "))
        .map(|l| {
            let name = l.split_whitespace().next().unwrap_or_default().to_owned();
            (name, l.ends_with(" ok"))
        })
        .collect()
}

/// Runs `case` through `pvkit run` with a fresh patterned image; asserts exit 0, a clean
/// stderr, `want` checks all passed and the protected part of the image unchanged.
/// Returns stdout.
fn scenario(case: &str, want: usize) -> String {
    scenario_with(case, want, &[])
}

/// [`scenario`] with more `pvkit run` flags (e.g. `--net`).
fn scenario_with(case: &str, want: usize, flags: &[&str]) -> String {
    // Named by the flags too: a case may run with and without them at once.
    let img = image(&format!("hostile-{case}-{}.img", flags.len()));
    let before = protected_sum(&img);
    let o: Output = pvkit(
        &[
            "run",
            HOSTILE,
            "--mem",
            "32",
            "--timeout",
            "20",
            "--disk",
            img.to_str().expect("utf-8 path"),
        ]
        .into_iter()
        .chain(flags.iter().copied())
        .chain(["--", &format!("case={case}")])
        .collect::<Vec<_>>(),
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr);
    let got = checks(&out);
    let failed: Vec<_> = got.iter().filter(|(_, ok)| !ok).collect();
    assert!(
        failed.is_empty(),
        "case={case}: failed checks {failed:?}\n{out}\n{err}"
    );
    assert_eq!(code(&o), 0, "case={case}\n{out}\n{err}");
    assert!(err.is_empty(), "case={case}: stderr: {err}");
    assert_eq!(
        got.len(),
        want,
        "case={case}: number of checks (update the pin and docs/SECURITY.md)\n{out}"
    );
    assert!(
        out.contains(&format!("summary checks={want} failed=0")),
        "{out}"
    );
    assert_eq!(
        protected_sum(&img),
        before,
        "case={case}: the image changed outside the scratch sectors"
    );
    let _ = std::fs::remove_file(&img);
    out
}

#[test]
fn hostile_hypercalls() {
    if !ready() {
        return;
    }
    let out = scenario("hypercalls", HYPERCALL_CHECKS);
    // The two console writes that were allowed, and nothing of the refused ones.
    assert!(out.contains("[console ok]\n"), "{out}");
    assert!(out.contains("<edge of ram>\n"), "{out}");
}

#[test]
fn hostile_rings() {
    if !ready() {
        return;
    }
    let out = scenario("rings", RING_CHECKS);
    // Exactly the one valid console-ring request reached the console.
    assert_eq!(out.matches("[ring ok]").count(), 1, "{out}");
}

#[test]
fn hostile_devices() {
    if !ready() {
        return;
    }
    let out = scenario("devices", DEVICE_CHECKS);
    assert!(
        out.contains("[uart ok]\n"),
        "the UART must still transmit: {out}"
    );
    assert!(
        !out.contains("LOOPLEAK"),
        "bytes sent in loopback mode must not reach the console: {out}"
    );
}

/// NE2000 register nonsense through the deployed VMM (seccomp on) with the loopback
/// backend: every check passes and the VMM exits cleanly.
#[test]
fn hostile_net() {
    if !ready() {
        return;
    }
    let out = scenario_with("net", NET_CHECKS, &["--net", "loopback"]);
    assert!(out.contains("check ne.flood.missed val=0x8 ok"), "{out}");
}

/// `QueueInterrupt` (0x007) nonsense through the deployed VMM with the irqchip and the PV
/// NIC's queues: bad queue ids `EINVAL`, missing queues `EOPNOTSUPP`, bad flags and GSIs
/// `EINVAL`, shared GSIs and a bind/unbind storm accepted.
#[test]
fn hostile_queue_interrupt() {
    if !ready() {
        return;
    }
    let out = scenario_with("qirq", QIRQ_CHECKS, &["--net", "loopback", "--nic", "pv"]);
    assert!(out.contains("check qirq.storm.ok val=0x200 ok"), "{out}");
}

/// `QueueInterrupt` in a VM without the in-kernel irqchip (no NIC, one vCPU): `RING_IRQ` is
/// not offered and every call is `EOPNOTSUPP`, whatever its arguments.
#[test]
fn hostile_queue_interrupt_without_irqchip() {
    if !ready() {
        return;
    }
    let out = scenario("qirq", QIRQ_NOCHIP_CHECKS);
    assert!(
        out.contains("check qirq.nochip.rx status=EOPNOTSUPP ok"),
        "{out}"
    );
}

/// `case=qirq` through the library: the storm of binds and unbinds of queues that have no
/// ring raised no interrupt on any line.
#[test]
fn hostile_queue_interrupt_raises_nothing() {
    if !ready() {
        return;
    }
    let img = image("hostile-qirq-lib.img");
    let cfg = VmConfig {
        kernel: KernelSource::Path(HOSTILE.into()),
        mem_mib: 32,
        cmdline: "case=qirq".into(),
        capture_console: true,
        timeout: Duration::from_secs(30),
        disk: Some(DiskConfig {
            path: img.clone(),
            read_only: false,
            base: None,
        }),
        net: Some(NetConfig {
            backend: NetBackendConfig::Loopback,
            mac: None,
            host_rtt: None,
        }),
        nic: NicModel::Pv,
        seccomp: false,
        ..VmConfig::default()
    };
    let o = run(&cfg).expect("run the hostile guest");
    let console = String::from_utf8_lossy(&o.console);
    assert_eq!(o.stop, StopReason::Exit(0), "{console}");
    assert_eq!(checks(&console).len(), QIRQ_CHECKS, "{console}");
    assert_eq!(o.ring_irqs_raised, Some(0), "{console}");
    let _ = std::fs::remove_file(&img);
}

/// `case=net` through the library, to look at the NIC's own counts: the four nonsense
/// rings dropped one reply each, the undrained ring dropped eight and kept one page free,
/// the two oversize transmits were refused and never reached the backend, and the
/// interrupt line never rose (`IMR = 0`).
#[test]
fn hostile_net_nic_records() {
    if !ready() {
        return;
    }
    let cfg = VmConfig {
        kernel: KernelSource::Path(HOSTILE.into()),
        mem_mib: 32,
        cmdline: "case=net".into(),
        capture_console: true,
        timeout: Duration::from_secs(30),
        net: Some(NetConfig {
            backend: NetBackendConfig::Loopback,
            mac: None,
            host_rtt: None,
        }),
        seccomp: false,
        ..VmConfig::default()
    };
    let o = run(&cfg).expect("run the hostile guest");
    let console = String::from_utf8_lossy(&o.console);
    assert_eq!(o.stop, StopReason::Exit(0), "{console}");
    assert_eq!(checks(&console).len(), NET_CHECKS, "{console}");
    let nic = o.net.expect("NIC stats");
    let m = &nic.model;
    assert_eq!(m.rx_bad_ring, 4, "{nic:?}");
    assert_eq!(m.rx_overflow, 8, "{nic:?}");
    assert_eq!(m.rx_frames, 5, "{nic:?}");
    assert_eq!(m.tx_refused, 2, "{nic:?}");
    // 17 ARP requests and the empty, runt and out-of-memory frames, each padded to 60.
    assert_eq!(m.tx_frames, 20, "{nic:?}");
    assert_eq!(nic.backend.tx_frames, 20, "{nic:?}");
    assert_eq!(nic.irqs_raised, 0, "{nic:?}");
}

/// All three scenarios in one boot through the library, to look at the VMM's records:
/// unknown hypercalls counted as such, the nonsense op logs verified as FAILED (not
/// trusted, not crashing the verifier), the 16 benchmark phases recorded.
#[test]
fn hostile_all_vmm_records() {
    if !ready() {
        return;
    }
    let img = image("hostile-all.img");
    let before = protected_sum(&img);
    let cfg = VmConfig {
        kernel: KernelSource::Path(HOSTILE.into()),
        mem_mib: 32,
        cmdline: "case=all".into(),
        capture_console: true,
        timeout: Duration::from_secs(30),
        disk: Some(DiskConfig {
            path: img.clone(),
            read_only: false,
            base: None,
        }),
        // The process-level tests above run the confined VMM; here a seccomp kill would
        // take the whole test binary down instead of failing one test.
        seccomp: false,
        ..VmConfig::default()
    };
    let o = run(&cfg).expect("run the hostile guest");
    let console = String::from_utf8_lossy(&o.console);
    assert_eq!(o.stop, StopReason::Exit(0), "{console}");
    let total = HYPERCALL_CHECKS + RING_CHECKS + DEVICE_CHECKS;
    assert_eq!(checks(&console).len(), total, "{console}");
    assert!(checks(&console).iter().all(|(_, ok)| *ok), "{console}");
    // 5 unknown numbers and 2 with RAX's upper half set.
    assert_eq!(o.ledger.count(ExitKind::UnknownHypercall), 7);
    let verdicts: Vec<_> = o.samples.iter().map(|s| &s.verification).collect();
    assert_eq!(verdicts.len(), 4, "{verdicts:?}");
    let failed = verdicts
        .iter()
        .filter(|v| matches!(v, Verification::Failed(m) if m.contains("op log entry 0")))
        .count();
    assert_eq!(failed, 3, "{verdicts:?}");
    assert!(matches!(verdicts[3], Verification::NoLog), "{verdicts:?}");
    assert_eq!(o.phases.len(), 16);
    assert_eq!(protected_sum(&img), before);
    let _ = std::fs::remove_file(&img);
}

/// `case=cpu-mem` through the deployed VMM (seccomp on) with 2 vCPUs: every refused
/// `VcpuUp`, `SendIpi`, `LockWait`/`LockKick` and balloon call got its documented status,
/// the good ones worked (the AP ran, 512 ranges in one call), and the VMM exited cleanly.
#[test]
fn hostile_cpu_mem() {
    if !ready() {
        return;
    }
    let out = scenario_with("cpu-mem", CPU_MEM_CHECKS, &["--vcpus", "2"]);
    assert!(out.contains("check up.ap-ran val=0x5eeda90001 ok"), "{out}");
}

/// `case=cpu-mem` through the library: exactly one exit per call the guest made (the
/// storms included: bounded work per call, no exit of its own on the receiving side), no
/// unknown call, the balloon's own counts (refused calls changed nothing, everything
/// deflated in the end), and the run well inside its bound (it takes well under a second;
/// two `LockWait`s time out after 10 ms each).
#[test]
fn hostile_cpu_mem_vmm_records() {
    if !ready() {
        return;
    }
    let cfg = VmConfig {
        kernel: KernelSource::Path(HOSTILE.into()),
        mem_mib: 32,
        vcpus: 2,
        cmdline: "case=cpu-mem".into(),
        capture_console: true,
        timeout: Duration::from_secs(30),
        seccomp: false,
        ..VmConfig::default()
    };
    let t0 = std::time::Instant::now();
    let o = run(&cfg).expect("run the hostile guest");
    let took = t0.elapsed();
    let console = String::from_utf8_lossy(&o.console);
    assert_eq!(o.stop, StopReason::Exit(0), "{console}");
    assert_eq!(o.stop_vcpu, 0);
    assert_eq!(checks(&console).len(), CPU_MEM_CHECKS, "{console}");
    assert!(checks(&console).iter().all(|(_, ok)| *ok), "{console}");
    for (h, n) in CPU_MEM_CALLS {
        assert_eq!(
            o.ledger.count(ExitKind::Hypercall(h)),
            n,
            "{h:?}: {:?}",
            o.ledger
        );
    }
    assert_eq!(o.ledger.count(ExitKind::UnknownHypercall), 0);
    assert_eq!(o.ledger.count(ExitKind::Shutdown), 0);
    let b = o.balloon.expect("balloon stats");
    // Good: one page after the image, 5 pages, 512 single pages; each back again.
    assert_eq!((b.inflate_calls, b.deflate_calls), (3, 3), "{b:?}");
    assert_eq!((b.pages_inflated, b.pages_deflated), (518, 518), "{b:?}");
    // 25 inflates and 3 deflates refused; a count of 0 is neither.
    assert_eq!(b.refused_calls, 28, "{b:?}");
    assert_eq!(
        (b.ballooned_pages, b.peak_ballooned_pages),
        (0, 512),
        "{b:?}"
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
}

/// `case=ap-garbage`: vCPU 1 started at an unmapped address triple-faults. The right
/// outcome is the one a triple fault of vCPU 0 has: the VM stops at once with status 126,
/// and the message names the AP and its `RIP` (vCPU 0 is not blamed, and does not spin on
/// until its own 5 s wait ends and it exits 1).
#[test]
fn hostile_ap_garbage_stops_the_vm_naming_the_ap() {
    if !ready() {
        return;
    }
    let o = pvkit(&[
        "run",
        HOSTILE,
        "--mem",
        "32",
        "--vcpus",
        "2",
        "--timeout",
        "20",
        "--",
        "case=ap-garbage",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    // A VM that did not notice the AP's fault ends with vCPU 0's exit 1 after 5 s.
    assert_eq!(code(&o), 126, "{out}\n{err}");
    assert_eq!(
        err.trim(),
        format!("vCPU 1: guest shut down (triple fault) at rip {AP_GARBAGE_RIP:#x}"),
        "{out}"
    );
    assert!(!out.contains("FAIL") && !out.contains("summary"), "{out}");

    let cfg = VmConfig {
        kernel: KernelSource::Path(HOSTILE.into()),
        mem_mib: 32,
        vcpus: 2,
        cmdline: "case=ap-garbage".into(),
        capture_console: true,
        timeout: Duration::from_secs(30),
        seccomp: false,
        ..VmConfig::default()
    };
    let o = run(&cfg).expect("run the hostile guest");
    assert_eq!(
        o.stop,
        StopReason::Shutdown {
            rip: Some(AP_GARBAGE_RIP)
        }
    );
    assert_eq!(o.stop_vcpu, 1);
    assert_eq!(o.stop.exit_status(), 126);
    assert_eq!(o.ledger.count(ExitKind::Shutdown), 1);
    assert_eq!(o.ledger.count(ExitKind::Hypercall(Hypercall::VcpuUp)), 1);
    // vCPU 0's registers are not offered as the fault's.
    assert!(o.stop_regs.is_none());
}
