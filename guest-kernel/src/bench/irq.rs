//! `irq/*/interrupt`: one interrupt raised, delivered, handled and acknowledged per
//! operation, the acknowledge done four ways. Needs KVM's in-kernel irqchip (the host
//! creates it for `bench=irq`) and x2APIC.
//!
//! | variant | raised by | delivered by | acknowledged by |
//! |---|---|---|---|
//! | `x2apic-eoi` | self-IPI (`wrmsr` x2APIC `SELF_IPI`) | LAPIC | `wrmsr` x2APIC EOI |
//! | `pv-eoi` | self-IPI | LAPIC | KVM PV EOI: clear the flag KVM set at injection; x2APIC EOI when it did not |
//! | `ioapic-eoi` | `out` to [`IRQ_TEST`] (the VMM writes GSI 5's irqfd) | IOAPIC pin 5, edge | `wrmsr` x2APIC EOI |
//! | `pic-eoi` | `out` to [`IRQ_TEST`] | 8259 PIC IRQ 5 (ExtINT through LVT0) | `out 0x20, 0x20` |
//!
//! Every variant raises its interrupt with interrupts disabled and then waits for it with
//! `sti; hlt`, as a driver would (on kvm_pvm a self-IPI is not delivered right after the
//! `wrmsr`: a spin loop would measure the interpreter, not the interrupt). Every handled
//! interrupt is counted: the case is verified when the handler ran exactly once per
//! operation. `extra` of the `pv-eoi` sample is the number of acknowledges KVM's
//! PV EOI flag made unnecessary (0 means PV EOI was accepted but never effective). `pv-eoi`
//! is skipped when KVM's CPUID lacks `KVM_FEATURE_PV_EOI` or the MSR write faults.
//!
//! Userspace exits per operation: 0 for the self-IPI variants, 1 (the [`IRQ_TEST`] write)
//! for the device ones; every APIC, IOAPIC and PIC access stays in the kernel.

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use super::{begin, case, end, latency_ops, Outcome, Runner, Scratch};
use crate::net::irq::{init_lapic, mask_irq, route_irq};
use pvkit_abi::bench::{Device, Variant, Workload, SAMPLE_LATENCY_PASS};
use pvkit_abi::ports::{IRQ_TEST, IRQ_TEST_GSI};
use pvkit_guest::addr::virt_to_phys;
use pvkit_guest::tsc::rdtsc;

/// The self-IPI vector.
const IPI_VECTOR: u8 = 0x40;
/// The IOAPIC-routed vector of GSI [`IRQ_TEST_GSI`].
const IOAPIC_VECTOR: u8 = 0x41;
/// The PIC's vector bases (master, slave); IRQ 5 arrives on `0x55`.
const PIC_BASE: u8 = 0x50;
const PIC_SLAVE_BASE: u8 = 0x58;
/// x2APIC MSRs.
const X2APIC_EOI: u32 = 0x80b;
const X2APIC_SELF_IPI: u32 = 0x83f;
const X2APIC_LVT0: u32 = 0x835;
/// LVT0 as ExtINT, unmasked (the PIC's output), and masked.
const LVT_EXTINT: u64 = 0x700;
const LVT_MASKED: u64 = 1 << 16;
/// `MSR_KVM_PV_EOI_EN` and its enable bit.
const MSR_KVM_PV_EOI_EN: u32 = 0x4b56_4d04;
/// `KVM_FEATURE_PV_EOI` in EAX of KVM's features leaf.
const KVM_FEATURE_PV_EOI: u32 = 1 << 6;

/// How the handler acknowledges (set before each case, read by the handler).
const ACK_X2APIC: u8 = 0;
const ACK_PV: u8 = 1;
const ACK_PIC: u8 = 2;
static ACK: AtomicU8 = AtomicU8::new(ACK_X2APIC);
/// Interrupts handled.
static HANDLED: AtomicU64 = AtomicU64::new(0);
/// Acknowledges the PV EOI flag made unnecessary.
static PV_SKIPPED: AtomicU64 = AtomicU64::new(0);

/// The PV EOI word KVM writes (bit 0: "no EOI needed"); 4-byte aligned as KVM requires.
#[repr(C, align(4))]
struct PvEoiWord(AtomicU32);
static PV_EOI: PvEoiWord = PvEoiWord(AtomicU32::new(0));

/// # Safety
/// `msr` must be an x2APIC register whose write with `value` keeps memory safety.
#[inline(always)]
unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: per the caller.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") value as u32,
            in("edx") (value >> 32) as u32, options(nostack, preserves_flags));
    }
}

#[inline(always)]
fn outb(port: u16, value: u8) {
    // SAFETY: PIC command/mask ports or the pvkit interrupt test port; no memory effect.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") port, in("al") value,
            options(nomem, nostack, preserves_flags));
    }
}

/// The handler of all three vectors (called by the entry stub below).
extern "C" fn bench_interrupt() {
    HANDLED.fetch_add(1, Ordering::Relaxed);
    match ACK.load(Ordering::Relaxed) {
        ACK_PIC => outb(0x20, 0x20),
        ACK_PV if PV_EOI.0.fetch_and(!1, Ordering::Relaxed) & 1 != 0 => {
            PV_SKIPPED.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the x2APIC EOI register; writing 0 acknowledges.
        _ => unsafe { wrmsr(X2APIC_EOI, 0) },
    }
}

// The entry stub (`crate::interrupts::interrupt_entry`).
crate::interrupts::interrupt_entry!(pvkit_bench_irq_entry, bench_interrupt);

/// Whether KVM's CPUID leaves offer `KVM_FEATURE_PV_EOI`.
fn pv_eoi_offered() -> bool {
    use core::arch::x86_64::__cpuid;
    use pvkit_guest::clock::kvm::{matches_signature, LEAF_BASES};
    LEAF_BASES.into_iter().any(|base| {
        let r = __cpuid(base);
        matches_signature(r.ebx, r.ecx, r.edx)
            && (r.eax == 0 || r.eax > base)
            && __cpuid(base + 1).eax & KVM_FEATURE_PV_EOI != 0
    })
}

/// Programs both PICs: vectors [`PIC_BASE`] and [`PIC_SLAVE_BASE`], only IRQ 5 unmasked
/// when `unmask` (else everything masked).
fn program_pic(unmask: bool) {
    outb(0x20, 0x11);
    outb(0xa0, 0x11);
    outb(0x21, PIC_BASE);
    outb(0xa1, PIC_SLAVE_BASE);
    outb(0x21, 0x04);
    outb(0xa1, 0x02);
    outb(0x21, 0x01);
    outb(0xa1, 0x01);
    outb(0x21, if unmask { !(1 << IRQ_TEST_GSI) } else { 0xff });
    outb(0xa1, 0xff);
}

/// How one variant raises its interrupt.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Raise {
    SelfIpi,
    Device,
}

/// Raises one interrupt and waits, halted (`sti; hlt`), until the handler ran
/// (`HANDLED == target`). Interrupts are disabled on entry and on return. A pending
/// interrupt wakes `hlt` at once; one that never comes leaves the vCPU halted until the
/// host's watchdog ends the run.
#[inline(always)]
fn one(raise: Raise, target: u64) {
    match raise {
        // SAFETY: a fixed-delivery self-IPI on a vector whose gate is installed; it stays
        // pending (interrupts are disabled) until the `sti; hlt` below.
        Raise::SelfIpi => unsafe { wrmsr(X2APIC_SELF_IPI, u64::from(IPI_VECTOR)) },
        Raise::Device => outb(IRQ_TEST, IRQ_TEST_GSI),
    }
    while HANDLED.load(Ordering::Relaxed) != target {
        crate::net::irq::wait_for_interrupt();
    }
}

/// The variants in run order: variant, how it is raised, how it is acknowledged.
const VARIANTS: [(Variant, Raise, u8); 4] = [
    (Variant::X2apicEoi, Raise::SelfIpi, ACK_X2APIC),
    (Variant::PvEoi, Raise::SelfIpi, ACK_PV),
    (Variant::IoapicEoi, Raise::Device, ACK_X2APIC),
    (Variant::PicEoi, Raise::Device, ACK_PIC),
];

/// Runs the selected variants.
pub fn run(r: &mut Runner, scratch: &mut Scratch) {
    let x2apic = init_lapic();
    // SAFETY: the entry stub is a complete interrupt entry (it saves what the interrupted
    // code may hold and ends in `iretq`); IST 0: interrupts only arrive at the waits below,
    // on the kernel stack, and the handler runs with interrupts disabled (no nesting).
    unsafe {
        let entry = pvkit_bench_irq_entry as *const () as u64;
        for v in [IPI_VECTOR, IOAPIC_VECTOR, PIC_BASE + IRQ_TEST_GSI] {
            pvkit_guest::rt::trap::set_gate(v, entry, 0);
        }
    }
    let ops = r.count(1000, 100);
    for (variant, raise, ack) in VARIANTS {
        let id = case(Device::Irq, variant, Workload::Interrupt);
        if !r.wants(Device::Irq, variant) {
            continue;
        }
        if !x2apic {
            r.skip(id, format_args!("x2APIC not offered"));
            continue;
        }
        // Set-up of the delivery path.
        match variant {
            Variant::PvEoi => {
                if !pv_eoi_offered() {
                    r.skip(id, format_args!("KVM_FEATURE_PV_EOI not offered by KVM"));
                    continue;
                }
                PV_EOI.0.store(0, Ordering::Relaxed);
                let gpa = virt_to_phys(&PV_EOI as *const PvEoiWord);
                // SAFETY: hands KVM a static, aligned word that stays valid for the whole
                // run (it is disabled again after the case).
                if !unsafe { crate::msr::wrmsr_safe(MSR_KVM_PV_EOI_EN, gpa | 1) } {
                    r.skip(id, format_args!("wrmsr MSR_KVM_PV_EOI_EN faulted"));
                    continue;
                }
            }
            Variant::IoapicEoi => route_irq(IRQ_TEST_GSI, IOAPIC_VECTOR),
            Variant::PicEoi => {
                program_pic(true);
                // SAFETY: LVT0 as ExtINT delivers the PIC's interrupts; its vectors have gates.
                unsafe { wrmsr(X2APIC_LVT0, LVT_EXTINT) };
            }
            _ => {}
        }
        ACK.store(ack, Ordering::Relaxed);
        PV_SKIPPED.store(0, Ordering::Relaxed);
        HANDLED.store(0, Ordering::Relaxed);
        // The latency pass: one TSC sample around each interrupt.
        let mut samples = scratch.samples();
        let latency = latency_ops(ops);
        for i in 1..=latency {
            let s = rdtsc();
            one(raise, i);
            samples.push(rdtsc() - s);
        }
        let n_samples = samples.len();
        HANDLED.store(0, Ordering::Relaxed);
        PV_SKIPPED.store(0, Ordering::Relaxed);
        let t0 = begin(id);
        for i in 1..=ops {
            one(raise, i);
        }
        let cycles_total = end(id, t0, ops);
        let handled = HANDLED.load(Ordering::Relaxed);
        let skipped = PV_SKIPPED.load(Ordering::Relaxed);
        // Tear-down: back to a masked, quiet state.
        match variant {
            Variant::PvEoi => {
                // SAFETY: disables PV EOI; KVM stops writing the word.
                unsafe { crate::msr::wrmsr_safe(MSR_KVM_PV_EOI_EN, 0) };
            }
            Variant::IoapicEoi => mask_irq(IRQ_TEST_GSI),
            Variant::PicEoi => {
                program_pic(false);
                // SAFETY: masks LVT0 again (no ExtINT delivery).
                unsafe { wrmsr(X2APIC_LVT0, LVT_MASKED) };
            }
            _ => {}
        }
        if handled != ops {
            println!("bench irq: {handled} interrupts handled for {ops} raised");
        }
        let outcome = Outcome {
            ops,
            cycles_total,
            flags: Outcome::checked(handled != ops) | SAMPLE_LATENCY_PASS,
            extra: skipped,
            samples: n_samples,
            ..Outcome::default()
        };
        r.report(id, &outcome, scratch);
    }
}
