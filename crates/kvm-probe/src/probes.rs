//! The probes. Each builds its own VM, runs a program of `guest/probe.S` and reports rows
//! of (probe, [`Status`], detail) with the numbers it measured.
#![allow(clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_enable_cap, kvm_irqchip, kvm_mp_state, kvm_msr_entry, Msrs, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MEM_LOG_DIRTY_PAGES, KVM_MP_STATE_RUNNABLE,
};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::guest_code as g;
use crate::harness::{
    kvm_err, spawn, vm_rss_kib, wait_until, HarnessError, ProbeVm, RunEnd, RunOutcome, Slot, APCNT,
    APMARK, APUP, AP_STACK, BSPCNT, BSP_STACK, CNT, GPCNT, PARAMS, PVACK, RES, RES1,
};

/// How a probe came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Works as on hardware KVM.
    Works,
    /// Does not work (or is not offered).
    Fails,
    /// Works in part (the detail says which part).
    Partial,
}

impl Status {
    /// The table name.
    pub fn name(self) -> &'static str {
        match self {
            Status::Works => "works",
            Status::Fails => "fails",
            Status::Partial => "partial",
        }
    }
}

/// One row of the table.
#[derive(Clone, Debug)]
pub struct ProbeResult {
    /// Which probe (`1a irqchip`, ...).
    pub probe: String,
    /// The result.
    pub status: Status,
    /// What was measured.
    pub detail: String,
}

fn row(probe: &str, status: Status, detail: impl Into<String>) -> ProbeResult {
    ProbeResult {
        probe: probe.into(),
        status,
        detail: detail.into(),
    }
}

fn ok_if(b: bool) -> Status {
    if b {
        Status::Works
    } else {
        Status::Fails
    }
}

/// Whether `/dev/kvm` is provided by the `kvm_pvm` module (the platform the facts in
/// docs/PLATFORM.md were measured on).
pub fn is_kvm_pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists() && std::fs::metadata("/dev/kvm").is_ok()
}

/// Time allowed for one guest program.
const RUN_LIMIT: Duration = Duration::from_secs(10);

/// Runs every probe, in order. Never panics on a failing feature: a failure is a row.
pub fn run_all() -> Vec<ProbeResult> {
    type Probe = fn() -> Result<Vec<ProbeResult>, HarnessError>;
    let probes: [(&str, Probe); 14] = [
        ("1 irqchip/pit", probe_irqchip),
        ("1 irq_line ioapic", || {
            probe_irq_delivery(Delivery::IrqLine)
        }),
        ("1 irq_line pic", || probe_irq_delivery(Delivery::Pic)),
        ("1 irqfd", || probe_irq_delivery(Delivery::Irqfd)),
        ("3 pv eoi ack", || probe_irq_delivery(Delivery::PvEoi)),
        ("2 xapic eoi", probe_xapic_eoi),
        ("2 x2apic", probe_x2apic),
        ("2 self-ipi", probe_self_ipi),
        ("3+7 pv features", probe_pv_features),
        ("4 smp sipi", probe_sipi),
        ("4 smp pv-up/ipi", probe_pv_up_ipi),
        ("5 dirty log", probe_dirty_log),
        ("5 madvise", probe_madvise),
        ("6 save/restore", probe_save_restore),
    ];
    let mut out = Vec::new();
    for (name, p) in probes {
        match p() {
            Ok(rows) => out.extend(rows),
            Err(e) => out.push(row(name, Status::Fails, e.to_string())),
        }
    }
    out
}

fn us(d: Duration, n: u64) -> f64 {
    d.as_secs_f64() * 1e6 / n.max(1) as f64
}

fn end_str(o: &RunOutcome) -> String {
    match &o.end {
        RunEnd::Finished => "finished".into(),
        RunEnd::Timeout => "timed out".into(),
        RunEnd::Failed(s) => format!("failed: {s}"),
    }
}

/// Runs a one-vCPU program in a fresh VM to completion.
fn run_program(
    irqchip: bool,
    entry: u64,
    args: [u64; 2],
) -> Result<(ProbeVm, RunOutcome), HarnessError> {
    let vm = ProbeVm::new(irqchip, false, &[])?;
    let v = vm.long_mode_vcpu(0, entry, BSP_STACK, args)?;
    let t = spawn(v, Box::new(|_| true))?;
    let o = t.join(Instant::now() + RUN_LIMIT)?;
    Ok((vm, o))
}

// ---- 1: irqchip, PIT, interrupt delivery ----------------------------------------------

fn probe_irqchip() -> Result<Vec<ProbeResult>, HarnessError> {
    let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    let mut rows = Vec::new();
    let caps = format!(
        "caps IRQCHIP={} IRQFD={} PIT2={} IRQ_ROUTING={} SIGNAL_MSI={} SPLIT_IRQCHIP={}",
        vm.check_extension_raw(kvm_bindings::KVM_CAP_IRQCHIP.into()),
        vm.check_extension_raw(kvm_bindings::KVM_CAP_IRQFD.into()),
        vm.check_extension_raw(kvm_bindings::KVM_CAP_PIT2.into()),
        vm.check_extension_raw(kvm_bindings::KVM_CAP_IRQ_ROUTING.into()),
        vm.check_extension_raw(kvm_bindings::KVM_CAP_SIGNAL_MSI.into()),
        vm.check_extension_raw(kvm_bindings::KVM_CAP_SPLIT_IRQCHIP.into()),
    );
    match vm.create_irq_chip() {
        Ok(()) => rows.push(row("1a KVM_CREATE_IRQCHIP", Status::Works, caps)),
        Err(e) => rows.push(row(
            "1a KVM_CREATE_IRQCHIP",
            Status::Fails,
            format!("{e}; {caps}"),
        )),
    }
    let cfg = kvm_bindings::kvm_pit_config::default();
    match vm.create_pit2(cfg) {
        Ok(()) => {
            let st = vm.get_pit2().map(|s| s.channels[0].mode);
            rows.push(row(
                "1b KVM_CREATE_PIT2",
                Status::Works,
                format!("created; KVM_GET_PIT2 {st:?} (channel 0 mode)"),
            ));
        }
        Err(e) => rows.push(row("1b KVM_CREATE_PIT2", Status::Fails, e.to_string())),
    }
    Ok(rows)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Delivery {
    IrqLine,
    Pic,
    Irqfd,
    PvEoi,
}

/// Interrupts raised per delivery probe.
const IRQS: u64 = 20;

fn probe_irq_delivery(d: Delivery) -> Result<Vec<ProbeResult>, HarnessError> {
    let (name, entry, pin) = match d {
        Delivery::IrqLine => ("1c KVM_IRQ_LINE->IOAPIC->LAPIC", g::IRQ_WAIT, 5u32),
        Delivery::Pic => ("1d KVM_IRQ_LINE->PIC (ExtINT)", g::IRQ_PIC, 3u32),
        Delivery::Irqfd => ("1e irqfd (GSI 6)->IOAPIC", g::IRQ_WAIT, 6u32),
        Delivery::PvEoi => (
            "3b PV EOI acknowledge (IRQ_LINE->IOAPIC, edge)",
            g::IRQ_WAIT_PVEOI,
            5u32,
        ),
    };
    let vm = ProbeVm::new(true, false, &[])?;
    if d == Delivery::Pic || d == Delivery::PvEoi {
        // The PIC (ICW2 = 0x30) raises vector 0x30 + IRQ; its handler acknowledges at the
        // PIC, not the LAPIC. The PV EOI handler acknowledges through the PV EOI flag.
        let (vector, h) = if d == Delivery::Pic {
            (0x30 + u64::from(pin), g::IRQ_PIC_HANDLER)
        } else {
            (0x30, g::IRQ_PVEOI_HANDLER)
        };
        set_gate(&vm, vector, h)?;
    }
    let efd = EventFd::new(libc::EFD_NONBLOCK)
        .map_err(|e| HarnessError::Memory(format!("eventfd: {e}")))?;
    if d == Delivery::Irqfd {
        vm.vm
            .register_irqfd(&efd, pin)
            .map_err(kvm_err("KVM_IRQFD"))?;
    }
    let v = vm.long_mode_vcpu(0, entry, BSP_STACK, [IRQS, u64::from(pin)])?;
    let t = spawn(v, Box::new(|_| true))?;
    let deadline = Instant::now() + RUN_LIMIT;
    let mut delivered = 0u64;
    let mut lat = Duration::ZERO;
    let mut raise_err = None;
    if t.wait_for(1, deadline).is_some() {
        for i in 0..IRQS {
            // Let the guest reach `hlt` (it reported "ready" before its first one).
            std::thread::sleep(Duration::from_millis(2));
            let t0 = Instant::now();
            let r = match d {
                Delivery::Irqfd => efd.write(1).map_err(|e| e.to_string()),
                _ => vm
                    .vm
                    .set_irq_line(pin, true)
                    .and_then(|()| vm.vm.set_irq_line(pin, false))
                    .map_err(|e| e.to_string()),
            };
            if let Err(e) = r {
                raise_err = Some(e);
                break;
            }
            let got = wait_until((t0 + Duration::from_millis(500)).min(deadline), || {
                vm.read_u64(CNT) > i
            });
            if !got {
                break;
            }
            lat += t0.elapsed();
            delivered = i + 1;
        }
    }
    let o = t.join(deadline)?;
    let window = o.window(1, 0xff).map(|(n, _)| n);
    let mut status = if delivered == IRQS && o.end == RunEnd::Finished {
        Status::Works
    } else if delivered > 0 {
        Status::Partial
    } else {
        Status::Fails
    };
    let mut detail = format!(
        "{delivered}/{IRQS} interrupts handled (guest hlt, IF=1); run {}; ",
        end_str(&o)
    );
    if let Some(n) = window {
        detail += &format!("{n} userspace exits during the {IRQS} interrupts; ");
    }
    if delivered > 0 {
        detail += &format!(
            "raise->handler-counted {:.1} µs mean (host-side, includes guest wake from hlt); ",
            us(lat, delivered)
        );
    }
    detail += &format!("exits: {}", o.reasons());
    if d == Delivery::PvEoi {
        let pv = vm.read_u64(PVACK);
        detail += &format!(
            "; {pv}/{delivered} acknowledged through the PV EOI flag (no LAPIC EOI write)"
        );
        if pv < delivered && status == Status::Works {
            status = Status::Partial;
        }
    }
    if let Some(e) = raise_err {
        detail += &format!("; raising failed: {e}");
    }
    Ok(vec![row(name, status, detail)])
}

// ---- 2: LAPIC ----------------------------------------------------------------------

/// EOI writes per EOI probe.
const EOIS: u64 = 1000;

fn probe_xapic_eoi() -> Result<Vec<ProbeResult>, HarnessError> {
    let (vm, o) = run_program(true, g::EOI_XAPIC, [EOIS, 0])?;
    let id = vm.read_u64(RES);
    let Some((n, d)) = o.window(1, 2) else {
        return Ok(vec![row(
            "2a xAPIC MMIO EOI",
            Status::Fails,
            format!("run {}; exits: {}", end_str(&o), o.reasons()),
        )]);
    };
    let status = if n == 0 {
        Status::Works
    } else {
        Status::Partial
    };
    Ok(vec![row(
        "2a xAPIC MMIO EOI",
        status,
        format!(
            "{EOIS} EOI writes to 0xfee000b0: {n} userspace exits ({}), {:.2} µs per write; \
             APIC ID register {id:#x}",
            if n == 0 {
                "handled in-kernel"
            } else {
                "exit to userspace"
            },
            us(d, EOIS)
        ),
    )])
}

fn cpuid_entry(vm: &ProbeVm, function: u32, index: u32) -> Option<kvm_bindings::kvm_cpuid_entry2> {
    vm.cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == function && e.index == index)
        .copied()
}

fn probe_x2apic() -> Result<Vec<ProbeResult>, HarnessError> {
    let probe = ProbeVm::new(true, false, &[])?;
    let offered = cpuid_entry(&probe, 1, 0).is_some_and(|e| e.ecx & (1 << 21) != 0);
    drop(probe);
    let mut rows = vec![row(
        "2b x2APIC in supported CPUID",
        ok_if(offered),
        format!("CPUID.1:ECX bit 21 = {}", u8::from(offered)),
    )];
    let (vm, o) = run_program(true, g::EOI_X2APIC, [EOIS, 0])?;
    let gp = vm.read_u64(GPCNT);
    let base = vm.read_u64(RES1);
    let id = vm.read_u64(RES);
    let extd = base & (1 << 10) != 0;
    match o.window(1, 2) {
        Some((n, d)) if gp == 0 && extd => rows.push(row(
            "2c x2APIC EOI (wrmsr 0x80b)",
            if n == 0 {
                Status::Works
            } else {
                Status::Partial
            },
            format!(
                "APIC_BASE={base:#x} (EXTD set), x2APIC ID {id}; {EOIS} EOI wrmsr: {n} \
                 userspace exits, {:.2} µs per write; exits: {}",
                us(d, EOIS),
                o.reasons()
            ),
        )),
        _ => rows.push(row(
            "2c x2APIC EOI (wrmsr 0x80b)",
            Status::Fails,
            format!(
                "run {}; #GP taken {gp}; APIC_BASE after enable {base:#x}; exits: {}",
                end_str(&o),
                o.reasons()
            ),
        )),
    }
    Ok(rows)
}

/// Self-IPIs per probe.
const SELF_IPIS: u64 = 200;

fn set_gate(vm: &ProbeVm, vector: u64, h: u64) -> Result<(), HarnessError> {
    let mut idt = [0u8; 16];
    idt[0..2].copy_from_slice(&(h as u16).to_le_bytes());
    idt[2..4].copy_from_slice(&0x08u16.to_le_bytes());
    idt[5] = 0x8e;
    idt[6..8].copy_from_slice(&((h >> 16) as u16).to_le_bytes());
    vm.mem
        .write_slice(&idt, GuestAddress(0x8000 + vector * 16))
        .map_err(|e| HarnessError::Memory(e.to_string()))
}

fn probe_self_ipi() -> Result<Vec<ProbeResult>, HarnessError> {
    let mut rows = Vec::new();
    for (name, entry) in [
        ("2d self-IPI xAPIC ICR", g::SELF_IPI_XAPIC),
        ("2e self-IPI x2APIC MSR 0x83f", g::SELF_IPI_X2APIC),
        ("3c PV EOI acknowledge (xAPIC self-IPI)", g::SELF_IPI_PVEOI),
    ] {
        let pveoi = entry == g::SELF_IPI_PVEOI;
        let vm = ProbeVm::new(true, false, &[])?;
        if pveoi {
            set_gate(&vm, 0x31, g::IRQ_PVEOI_HANDLER)?;
        }
        let v = vm.long_mode_vcpu(0, entry, BSP_STACK, [SELF_IPIS, 0])?;
        let o = spawn(v, Box::new(|_| true))?.join(Instant::now() + RUN_LIMIT)?;
        let got = vm.read_u64(CNT);
        let gp = vm.read_u64(GPCNT);
        let pv = vm.read_u64(PVACK);
        let pv_note = if pveoi {
            format!("; {pv}/{got} acknowledged through the PV EOI flag (no LAPIC EOI write)")
        } else {
            String::new()
        };
        rows.push(match o.window(1, 2) {
            Some((n, d)) if got == SELF_IPIS => row(
                name,
                if pveoi && pv < got {
                    Status::Partial
                } else {
                    Status::Works
                },
                format!(
                    "{got}/{SELF_IPIS} delivered and acknowledged; {n} userspace exits; {:.1} µs \
                     per IPI+handler+EOI (guest loop, host-timed){pv_note}",
                    us(d, SELF_IPIS)
                ),
            ),
            _ => row(
                name,
                if got > 0 {
                    Status::Partial
                } else {
                    Status::Fails
                },
                format!(
                    "{got}/{SELF_IPIS} delivered; #GP {gp}; run {}; exits: {}{pv_note}",
                    end_str(&o),
                    o.reasons()
                ),
            ),
        });
    }
    Ok(rows)
}

// ---- 3 + 7: KVM PV features --------------------------------------------------------

const KVM_FEATURES: [(u32, &str); 13] = [
    (0, "CLOCKSOURCE"),
    (1, "NOP_IO_DELAY"),
    (3, "CLOCKSOURCE2"),
    (4, "ASYNC_PF"),
    (5, "STEAL_TIME"),
    (6, "PV_EOI"),
    (7, "PV_UNHALT"),
    (9, "PV_TLB_FLUSH"),
    (11, "PV_SEND_IPI"),
    (12, "POLL_CONTROL"),
    (13, "PV_SCHED_YIELD"),
    (14, "ASYNC_PF_INT"),
    (15, "MSI_EXT_DEST_ID"),
];

fn guest_wrmsr(msr: u32, value: u64) -> Result<(u64, u64, RunOutcome, ProbeVm), HarnessError> {
    let (vm, o) = run_program(false, g::WRMSR_PROBE, [u64::from(msr), value])?;
    Ok((vm.read_u64(GPCNT), vm.read_u64(RES), o, vm))
}

fn probe_pv_features() -> Result<Vec<ProbeResult>, HarnessError> {
    let vm = ProbeVm::new(false, false, &[])?;
    let sig = cpuid_entry(&vm, 0x4000_0000, 0);
    let feat = cpuid_entry(&vm, 0x4000_0001, 0).map_or(0, |e| e.eax);
    let sig_str = sig.map_or("no leaf 0x40000000".to_string(), |e| {
        let b: Vec<u8> = [e.ebx, e.ecx, e.edx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        format!(
            "0x40000000 \"{}\" max {:#x}",
            String::from_utf8_lossy(&b).trim_end_matches('\0'),
            e.eax
        )
    });
    let names: Vec<&str> = KVM_FEATURES
        .iter()
        .filter(|(b, _)| feat & (1 << b) != 0)
        .map(|(_, n)| *n)
        .collect();
    let has = |bit: u32| feat & (1 << bit) != 0;
    let mut rows = vec![row(
        "3/7 KVM PV leaves",
        ok_if(sig.is_some()),
        format!("{sig_str}; 0x40000001.EAX={feat:#x}: {}", names.join(" ")),
    )];
    // PV EOI: the MSR takes a 4-byte-aligned GPA | enable bit 0.
    let (gp, back, o, _) = guest_wrmsr(0x4b56_4d04, 0x3_0400 | 1)?;
    rows.push(row(
        "3 PV EOI (KVM_FEATURE_PV_EOI, MSR 0x4b564d04)",
        if has(6) && gp == 0 && back == 0x3_0401 {
            Status::Works
        } else if has(6) || gp == 0 {
            Status::Partial
        } else {
            Status::Fails
        },
        format!(
            "CPUID bit 6 = {}; guest wrmsr(0x4b564d04, 0x30401): #GP {gp}, reads back {back:#x}; \
             run {}",
            u8::from(has(6)),
            end_str(&o)
        ),
    ));
    let (gp, back, o, svm) = guest_wrmsr(0x4b56_4d03, 0x3_0440 | 1)?;
    let (steal, version) = (svm.read_u64(0x3_0440), svm.read_u64(0x3_0448) & 0xffff_ffff);
    rows.push(row(
        "7 steal time (KVM_FEATURE_STEAL_TIME, MSR 0x4b564d03)",
        if has(5) && gp == 0 && back == 0x3_0441 && version != 0 && version % 2 == 0 {
            Status::Works
        } else if has(5) || gp == 0 {
            Status::Partial
        } else {
            Status::Fails
        },
        format!(
            "CPUID bit 5 = {}; guest wrmsr(0x4b564d03, 0x30441): #GP {gp}, reads back {back:#x}; \
             record after the run: steal {steal} ns, version {version}; run {}",
            u8::from(has(5)),
            end_str(&o)
        ),
    ));
    rows.push(row(
        "7 KVM_FEATURE_PV_SEND_IPI",
        ok_if(has(11)),
        format!("CPUID 0x40000001.EAX bit 11 = {}", u8::from(has(11))),
    ));
    rows.push(row(
        "7 KVM_FEATURE_PV_UNHALT",
        ok_if(has(7)),
        format!(
            "CPUID 0x40000001.EAX bit 7 = {} (KVM_HC_KICK_CPU)",
            u8::from(has(7))
        ),
    ));
    Ok(rows)
}

// ---- 4: SMP ------------------------------------------------------------------------

fn probe_sipi() -> Result<Vec<ProbeResult>, HarnessError> {
    let vm = ProbeVm::new(true, false, &[])?;
    let bsp = vm.long_mode_vcpu(0, g::SIPI, BSP_STACK, [g::AP_REAL >> 12, 0])?;
    let ap = vm.vcpu(1)?;
    let mp = ap.get_mp_state().map(|m| m.mp_state);
    let ap_t = spawn(ap, Box::new(|e| e.code != 3))?;
    let bsp_t = spawn(bsp, Box::new(|_| true))?;
    let deadline = Instant::now() + RUN_LIMIT;
    let start = bsp_t.wait_for(1, deadline);
    let ap_ev = ap_t.wait_for(3, deadline.min(Instant::now() + Duration::from_secs(3)));
    let b = bsp_t.join(deadline)?;
    let a = ap_t.join(Instant::now())?;
    let mark = vm.read_u64(APMARK) & 0xffff_ffff;
    let ok = mark == 0xcafe && ap_ev.is_some();
    let mut detail = format!(
        "AP mp_state before: {mp:?} (0=RUNNABLE 1=UNINITIALIZED); marker {mark:#x}; BSP run {}, \
         exits {}; AP run {}, exits: {}",
        end_str(&b),
        b.reasons(),
        end_str(&a),
        a.reasons()
    );
    if let (Some(s), Some(e)) = (start, ap_ev) {
        detail += &format!(
            "; INIT-SIPI-SIPI to the AP's first report {:.0} µs",
            us(e.at.saturating_duration_since(s.at), 1)
        );
    }
    Ok(vec![row(
        "4a INIT-SIPI-SIPI (real-mode AP)",
        ok_if(ok),
        detail,
    )])
}

/// IPI round trips in the ping-pong probe.
const PINGS: u64 = 200;

fn probe_pv_up_ipi() -> Result<Vec<ProbeResult>, HarnessError> {
    let vm = ProbeVm::new(true, false, &[])?;
    let bsp = vm.long_mode_vcpu(0, g::IPI_PINGPONG, BSP_STACK, [PINGS, 0])?;
    let ap = vm.vcpu(1)?;
    let t0 = Instant::now();
    crate::harness::set_long_mode(&ap, g::AP_ENTRY, AP_STACK, [0, 0])?;
    let mp = ap.set_mp_state(kvm_mp_state {
        mp_state: KVM_MP_STATE_RUNNABLE,
    });
    let ap_t = spawn(ap, Box::new(|_| true))?;
    let deadline = Instant::now() + RUN_LIMIT;
    let up = ap_t.wait_for(4, deadline);
    let mut rows = vec![row(
        "4b PV vCPU-up (SET_SREGS/REGS + SET_MP_STATE)",
        ok_if(up.is_some() && vm.read_u64(APUP) & 0xffff_ffff == 0xbeef),
        format!(
            "KVM_SET_MP_STATE(RUNNABLE): {}; AP reported in long mode {} µs after the host \
             started setting its registers",
            match &mp {
                Ok(()) => "ok".to_string(),
                Err(e) => e.to_string(),
            },
            up.map_or("never".into(), |e| format!(
                "{:.0}",
                us(e.at.saturating_duration_since(t0), 1)
            )),
        ),
    )];
    let bsp_t = spawn(bsp, Box::new(|_| true))?;
    let b = bsp_t.join(deadline)?;
    let a = ap_t.join(Instant::now())?;
    let (bc, ac) = (vm.read_u64(BSPCNT), vm.read_u64(APCNT));
    rows.push(match b.window(1, 2) {
        Some((n, d)) if bc == PINGS && ac == PINGS => row(
            "4c cross-vCPU IPI round trip",
            Status::Works,
            format!(
                "{PINGS} round trips (fixed IPI 0->1 vector 0x40, answered 1->0 vector 0x41, \
                 xAPIC ICR): {:.1} µs per round trip; BSP userspace exits in window {n}; AP \
                 exits: {}",
                us(d, PINGS),
                a.reasons()
            ),
        ),
        _ => row(
            "4c cross-vCPU IPI round trip",
            if ac > 0 {
                Status::Partial
            } else {
                Status::Fails
            },
            format!(
                "AP got {ac}, BSP got {bc} of {PINGS}; BSP run {}, exits {}; AP run {}, exits {}",
                end_str(&b),
                b.reasons(),
                end_str(&a),
                a.reasons()
            ),
        ),
    });
    Ok(rows)
}

// ---- 5: memory ---------------------------------------------------------------------

const DIRTY_GPA: u64 = 0x40_0000;
const DIRTY_SIZE: u64 = 2 << 20;

fn dirty_pages(vm: &ProbeVm) -> Result<Vec<u64>, HarnessError> {
    let bm = vm
        .vm
        .get_dirty_log(1, DIRTY_SIZE as usize)
        .map_err(kvm_err("KVM_GET_DIRTY_LOG"))?;
    let mut pages = Vec::new();
    for (i, w) in bm.iter().enumerate() {
        for b in 0..64 {
            if w & (1 << b) != 0 {
                pages.push(i as u64 * 64 + b);
            }
        }
    }
    Ok(pages)
}

fn dirty_round(vm: &ProbeVm, pages: &[u64]) -> Result<(Vec<u64>, RunOutcome), HarnessError> {
    for (i, p) in pages.iter().enumerate() {
        vm.write_u64(PARAMS + 8 * i as u64, DIRTY_GPA + p * 4096 + 8)?;
    }
    let v = vm.long_mode_vcpu(0, g::DIRTY_WRITER, BSP_STACK, [PARAMS, pages.len() as u64])?;
    let o = spawn(v, Box::new(|_| true))?.join(Instant::now() + RUN_LIMIT)?;
    Ok((dirty_pages(vm)?, o))
}

fn probe_dirty_log() -> Result<Vec<ProbeResult>, HarnessError> {
    let slot = Slot {
        gpa: DIRTY_GPA,
        size: DIRTY_SIZE,
        flags: KVM_MEM_LOG_DIRTY_PAGES,
    };
    let vm = ProbeVm::new(false, false, &[slot])?;
    let before = dirty_pages(&vm)?;
    let w1 = [0u64, 3, 7, 100, 511];
    let (d1, o1) = dirty_round(&vm, &w1)?;
    // A second round on a new vCPU id: the log must have been cleared by the first read.
    let w2 = [5u64, 7];
    let vcpu2_pages = {
        for (i, p) in w2.iter().enumerate() {
            vm.write_u64(PARAMS + 8 * i as u64, DIRTY_GPA + p * 4096 + 8)?;
        }
        let v = vm.long_mode_vcpu(1, g::DIRTY_WRITER, BSP_STACK, [PARAMS, 2])?;
        let o = spawn(v, Box::new(|_| true))?.join(Instant::now() + RUN_LIMIT)?;
        (dirty_pages(&vm)?, o)
    };
    let (d2, o2) = vcpu2_pages;
    let exact1 = d1 == w1;
    let exact2 = d2 == w2;
    let status = if exact1 && exact2 && o1.end == RunEnd::Finished && o2.end == RunEnd::Finished {
        Status::Works
    } else if !d1.is_empty() || !d2.is_empty() {
        Status::Partial
    } else {
        Status::Fails
    };
    let mut rows = vec![row(
        "5a KVM_GET_DIRTY_LOG",
        status,
        format!(
            "initial log {before:?}; round 1 wrote pages {w1:?}, log {d1:?}; round 2 wrote \
             {w2:?}, log {d2:?} (exact: {exact1}/{exact2}); runs {}/{}",
            end_str(&o1),
            end_str(&o2)
        ),
    )];
    let kvm = &vm.kvm;
    let ring = vm.vm.check_extension_raw(192); // KVM_CAP_DIRTY_LOG_RING
    let ring_acq = vm.vm.check_extension_raw(223); // KVM_CAP_DIRTY_LOG_RING_ACQ_REL
    let manual = kvm.check_extension_raw(168); // KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2
    let enable = if ring > 0 {
        let fresh = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let cap = kvm_enable_cap {
            cap: if ring_acq > 0 { 223 } else { 192 },
            args: [65536, 0, 0, 0],
            ..Default::default()
        };
        match fresh.enable_cap(&cap) {
            Ok(()) => "KVM_ENABLE_CAP(64 KiB ring) ok".to_string(),
            Err(e) => format!("KVM_ENABLE_CAP(64 KiB ring): {e}"),
        }
    } else {
        "not offered".into()
    };
    rows.push(row(
        "5b KVM_CAP_DIRTY_LOG_RING",
        ok_if(ring > 0 && enable.ends_with("ok")),
        format!(
            "DIRTY_LOG_RING={ring} (max ring bytes), ACQ_REL={ring_acq}, \
             MANUAL_DIRTY_LOG_PROTECT2={manual}; {enable}"
        ),
    ));
    Ok(rows)
}

const BALLOON_GPA: u64 = 0x100_0000;
const BALLOON_SIZE: u64 = 64 << 20;

fn probe_madvise() -> Result<Vec<ProbeResult>, HarnessError> {
    let slot = Slot {
        gpa: BALLOON_GPA,
        size: BALLOON_SIZE,
        flags: 0,
    };
    let pages = BALLOON_SIZE / 4096;
    let rss0 = vm_rss_kib();
    let vm = ProbeVm::new(false, false, &[slot])?;
    let v = vm.long_mode_vcpu(0, g::TOUCH, BSP_STACK, [BALLOON_GPA, pages])?;
    let t = Instant::now();
    let o1 = spawn(v, Box::new(|_| true))?.join(Instant::now() + RUN_LIMIT)?;
    let touch = t.elapsed();
    let rss1 = vm_rss_kib();
    let region = vm
        .mem
        .find_region(GuestAddress(BALLOON_GPA))
        .ok_or_else(|| HarnessError::Memory("balloon region missing".into()))?;
    let host = region
        .get_host_address(vm_memory::MemoryRegionAddress(0))
        .map_err(|e| HarnessError::Memory(e.to_string()))?;
    let t = Instant::now();
    // SAFETY: `host..host+BALLOON_SIZE` is exactly the mapping of this region, owned by
    // `vm.mem`; MADV_DONTNEED on a private anonymous mapping only zero-fills it.
    let rc = unsafe { libc::madvise(host.cast(), BALLOON_SIZE as usize, libc::MADV_DONTNEED) };
    let madv = t.elapsed();
    let errno = std::io::Error::last_os_error();
    let rss2 = vm_rss_kib();
    let v = vm.long_mode_vcpu(1, g::COUNT_NONZERO, BSP_STACK, [BALLOON_GPA, pages])?;
    let o2 = spawn(v, Box::new(|_| true))?.join(Instant::now() + RUN_LIMIT)?;
    let nonzero = vm.read_u64(RES);
    let rss3 = vm_rss_kib();
    let drop_kib = rss1.saturating_sub(rss2);
    let zeros = o2.end == RunEnd::Finished && nonzero == 0;
    let rss_ok = drop_kib * 10 >= (BALLOON_SIZE / 1024) * 9;
    let touched_ok = o1.end == RunEnd::Finished;
    Ok(vec![row(
        "5c madvise(MADV_DONTNEED) on guest RAM",
        if rc == 0 && zeros && rss_ok && touched_ok {
            Status::Works
        } else if rc == 0 && (zeros || rss_ok) {
            Status::Partial
        } else {
            Status::Fails
        },
        format!(
            "guest wrote {pages} pages (64 MiB) in {:.0} ms; VmRSS {rss0} -> {rss1} KiB after \
             touch, {rss2} KiB after madvise ({} in {:.2} ms; -{drop_kib} KiB = {:.0}% of 64 MiB), \
             {rss3} KiB after the guest re-read; guest sees {nonzero} non-zero pages afterwards; \
             runs {}/{}",
            touch.as_secs_f64() * 1e3,
            if rc == 0 {
                "ok".to_string()
            } else {
                errno.to_string()
            },
            madv.as_secs_f64() * 1e3,
            drop_kib as f64 * 100.0 / (BALLOON_SIZE / 1024) as f64,
            end_str(&o1),
            end_str(&o2)
        ),
    )])
}

// ---- 6: save/restore ---------------------------------------------------------------

fn res<T>(r: Result<T, vmm_sys_util::errno::Error>) -> (Option<T>, String) {
    match r {
        Ok(v) => (Some(v), "ok".into()),
        Err(e) => (None, format!("errno {}", e.errno())),
    }
}

/// Code-5 reports (256 increments each) before the snapshot and after the restore.
const COUNTER_ROUNDS: u32 = 4;

fn run_counter(v: VcpuFd) -> Result<RunOutcome, HarnessError> {
    let mut seen = 0;
    let t = spawn(
        v,
        Box::new(move |e| {
            if e.code == 5 {
                seen += 1;
            }
            seen < COUNTER_ROUNDS
        }),
    )?;
    t.join(Instant::now() + RUN_LIMIT)
}

fn probe_save_restore() -> Result<Vec<ProbeResult>, HarnessError> {
    let a = ProbeVm::new(true, true, &[])?;
    let v = a.long_mode_vcpu(0, g::COUNTER, BSP_STACK, [0, 0])?;
    let mut o = run_counter(v)?;
    let counted = a.read_u64(RES);
    let mut v = o.vcpu;
    // Complete the pending OUT (KVM advances RIP on the next entry) before reading state.
    v.set_kvm_immediate_exit(1);
    let imm = v.run().map(|_| ()).map_err(|e| e.errno());
    v.set_kvm_immediate_exit(0);
    let t = Instant::now();
    let mut log: Vec<String> = vec![format!("immediate_exit run -> {imm:?}")];
    let (regs, s) = res(v.get_regs());
    log.push(format!("GET_REGS {s}"));
    let (sregs, s) = res(v.get_sregs());
    log.push(format!("GET_SREGS {s}"));
    let (fpu, s) = res(v.get_fpu());
    log.push(format!("GET_FPU {s}"));
    let (xsave, s) = res(v.get_xsave());
    log.push(format!("GET_XSAVE {s}"));
    let (xcrs, s) = res(v.get_xcrs());
    log.push(format!("GET_XCRS {s}"));
    let (lapic, s) = res(v.get_lapic());
    log.push(format!("GET_LAPIC {s}"));
    let (events, s) = res(v.get_vcpu_events());
    log.push(format!("GET_VCPU_EVENTS {s}"));
    let (mp, s) = res(v.get_mp_state());
    log.push(format!("GET_MP_STATE {s}"));
    let msr_list = a
        .kvm
        .get_msr_index_list()
        .map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?;
    let entries: Vec<kvm_msr_entry> = msr_list
        .as_slice()
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut msrs = Msrs::from_entries(&entries)
        .map_err(|e| HarnessError::Memory(format!("MSR list: {e:?}")))?;
    let (nmsr, s) = res(v.get_msrs(&mut msrs));
    let nmsr = nmsr.unwrap_or(0);
    log.push(format!("GET_MSRS {s} ({nmsr}/{} read)", entries.len()));
    let mut chips = Vec::new();
    for (id, name) in [
        (KVM_IRQCHIP_PIC_MASTER, "PIC master"),
        (KVM_IRQCHIP_PIC_SLAVE, "PIC slave"),
        (KVM_IRQCHIP_IOAPIC, "IOAPIC"),
    ] {
        let mut c = kvm_irqchip {
            chip_id: id,
            ..Default::default()
        };
        let (r, s) = res(a.vm.get_irqchip(&mut c));
        log.push(format!("GET_IRQCHIP {name} {s}"));
        if r.is_some() {
            chips.push(c);
        }
    }
    let (pit, s) = res(a.vm.get_pit2());
    log.push(format!("GET_PIT2 {s}"));
    let (clock, s) = res(a.vm.get_clock());
    log.push(format!("GET_CLOCK {s}"));
    let save_us = us(t.elapsed(), 1);

    // Restore into a fresh VM with a copy of RAM.
    let b = ProbeVm::new(true, true, &[])?;
    let mut ram = vec![0u8; crate::harness::BOOT_RAM as usize];
    a.mem
        .read_slice(&mut ram, GuestAddress(0))
        .map_err(|e| HarnessError::Memory(e.to_string()))?;
    b.mem
        .write_slice(&ram, GuestAddress(0))
        .map_err(|e| HarnessError::Memory(e.to_string()))?;
    let t = Instant::now();
    let w = b.vcpu(0)?;
    let note = |what: &str, r: Result<(), vmm_sys_util::errno::Error>, log: &mut Vec<String>| {
        let (_, s) = res(r);
        log.push(format!("{what} {s}"));
    };
    if let Some(x) = &sregs {
        note("SET_SREGS", w.set_sregs(x), &mut log);
    }
    if let Some(x) = &regs {
        note("SET_REGS", w.set_regs(x), &mut log);
    }
    if let Some(x) = &fpu {
        note("SET_FPU", w.set_fpu(x), &mut log);
    }
    if let Some(x) = &xsave {
        // SAFETY: `x` came from KVM_GET_XSAVE on a vCPU of the same host (same size).
        note("SET_XSAVE", unsafe { w.set_xsave(x) }, &mut log);
    }
    if let Some(x) = &xcrs {
        note("SET_XCRS", w.set_xcrs(x), &mut log);
    }
    let set_msrs = Msrs::from_entries(&msrs.as_slice()[..nmsr.min(msrs.as_slice().len())])
        .map_err(|e| HarnessError::Memory(format!("MSR list: {e:?}")))?;
    match w.set_msrs(&set_msrs) {
        Ok(n) => log.push(format!("SET_MSRS ok ({n}/{nmsr} written)")),
        Err(e) => log.push(format!("SET_MSRS errno {}", e.errno())),
    }
    if let Some(x) = &lapic {
        note("SET_LAPIC", w.set_lapic(x), &mut log);
    }
    if let Some(x) = &events {
        note("SET_VCPU_EVENTS", w.set_vcpu_events(x), &mut log);
    }
    if let Some(x) = mp {
        note("SET_MP_STATE", w.set_mp_state(x), &mut log);
    }
    for c in &chips {
        note("SET_IRQCHIP", b.vm.set_irqchip(c), &mut log);
    }
    if let Some(x) = &pit {
        note("SET_PIT2", b.vm.set_pit2(x), &mut log);
    }
    if let Some(x) = &clock {
        let mut c = *x;
        c.flags = 0;
        note("SET_CLOCK", b.vm.set_clock(&c), &mut log);
    }
    let restore_us = us(t.elapsed(), 1);
    let clock_after = b.vm.get_clock().map(|c| c.clock).unwrap_or(0);
    let clock_before = clock.map_or(0, |c| c.clock);
    o = run_counter(w)?;
    let continued = b.read_u64(RES);
    let rbx = o.vcpu.get_regs().map(|r| r.rbx).unwrap_or(0);
    let expect = 2 * u64::from(COUNTER_ROUNDS) * 256;
    let ok = counted == u64::from(COUNTER_ROUNDS) * 256 && continued == expect && rbx == expect;
    let mut rows = vec![row(
        "6a state get/set ioctls",
        if log.iter().all(|l| !l.contains("errno")) {
            Status::Works
        } else {
            Status::Partial
        },
        format!(
            "{}; save {save_us:.0} µs, restore {restore_us:.0} µs",
            log.join(", ")
        ),
    )];
    rows.push(row(
        "6b restore into a fresh VM, counter continues",
        ok_if(ok && o.end == RunEnd::Finished),
        format!(
            "counter {counted} at snapshot, {continued} (rbx {rbx}) after {COUNTER_ROUNDS} more \
             rounds in the new VM (expected {expect}); new VM run {}; kvmclock {clock_before} ns \
             saved -> {clock_after} ns in the new VM after SET_CLOCK",
            end_str(&o)
        ),
    ));
    Ok(rows)
}
