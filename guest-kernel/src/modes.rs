//! The modes the command line selects ([`crate::cmdline`]), each as cheap as it can be.
//!
//! First `alloc=N` if given (a heap check, no output, no exits). Then the output: the
//! banner, or with `print=N` exactly `N` bytes of `x` in one console write (repeated
//! `writes=K` times) and no banner, so a test can count exits exactly:
//! on the PV console `K` hypercalls (one per 64 KiB), on the UART `2·N·K` port accesses,
//! then one `Exit` hypercall. With `flood` the writes never end (the host's watchdog or a
//! signal stops the VM); with `ring=doorbell|eventfd` they go through the console ring
//! ([`print_ring`]). Then the action, if any (fault, panic, spin, triple fault),
//! else `Exit` with `exit=N` (default 0).

use crate::cmdline::{Action, Args, FaultKind, Print};
use crate::console::{self, ConsoleKind};
use crate::heap::MAX_HEAP;
use crate::statics::{Exclusive, Pages};
use alloc::vec::Vec;
use pvkit_abi::boot::BootInfo;
use pvkit_abi::cpuid::Features;
use pvkit_abi::ring::Transport;
use pvkit_abi::Status;
use pvkit_abi::ABI_VERSION;
use pvkit_guest::clock::ClockPage;
use pvkit_guest::console::MAX_WRITE;
use pvkit_guest::console_ring::ConsoleRing;

/// A guest-physical address above the 4 GiB boot identity map, so unmapped (64 GiB).
const UNMAPPED: u64 = 0x10_0000_0000;
/// An address that is not canonical in 4-level paging.
const NON_CANONICAL: u64 = 0x8000_0000_0000_0000;

/// Runs the mode and ends the VM.
pub fn run(args: &Args, console: ConsoleKind, boot: &BootInfo) -> ! {
    if let Some(bench) = &args.bench {
        crate::bench::run(bench, boot);
    }
    if let Some(lock) = &args.lock {
        crate::lock::run(lock, boot);
    }
    if let Some(net) = args.net {
        crate::net::run(net, boot);
    }
    if let Some((batches, eventfd)) = args.blkirq {
        crate::blkirq::run(batches, eventfd, boot);
    }
    if let Some(c) = args.counter {
        crate::counter::run(c, boot);
    }
    if let Some(e) = args.emuload {
        crate::emuload::run(e);
    }
    if let Some(bytes) = args.alloc {
        alloc_touch_free(bytes);
    }
    match args.print {
        Some(p) => print_x(p, Features::from_bits_truncate(boot.features)),
        None => println!(
            "pvkit guest kernel {} (ABI {}.{}) console={}",
            crate::VERSION,
            ABI_VERSION.major,
            ABI_VERSION.minor,
            console.name()
        ),
    }
    if args.user {
        user_check(boot);
    }
    if args.disk {
        crate::diskcheck::run(boot);
    }
    if let Some(b) = args.balloon {
        crate::balloon::run(b, boot);
    }
    if let Some(w) = args.workload {
        crate::workload::run(w, boot);
    }
    if let Some((mode, cpus)) = args.smp {
        crate::smp::run(mode, cpus, args.ipi, boot);
    }
    match args.action {
        None => crate::exit(args.exit_code),
        Some(Action::Fault(kind)) => fault(kind),
        Some(Action::Panic) => panic!("requested panic"),
        Some(Action::Spin) => loop {
            core::hint::spin_loop();
        },
        Some(Action::Triple) => crate::interrupts::triple_fault(),
    }
}

/// `alloc=N`: one heap allocation of `N` bytes, first and last byte written and read
/// back, then freed. Costs a few hundred instructions, independent of `N` (nothing is
/// filled). Panics (reported to the host) if the heap cannot satisfy it.
fn alloc_touch_free(bytes: usize) {
    if bytes == 0 {
        return;
    }
    let mut v: Vec<u8> = Vec::new();
    if v.try_reserve_exact(bytes).is_err() {
        panic!(
            "alloc={bytes}: the heap cannot satisfy it (at most {} MiB)",
            MAX_HEAP >> 20
        );
    }
    let p = v.as_mut_ptr();
    // SAFETY: `p` points at `bytes` (> 0) bytes of capacity just reserved; volatile so the
    // writes and reads really reach that memory.
    let ok = unsafe {
        p.write_volatile(0xa5);
        let first = p.read_volatile() == 0xa5;
        p.add(bytes - 1).write_volatile(0x5a);
        first && p.add(bytes - 1).read_volatile() == 0x5a
    };
    assert!(ok, "alloc={bytes}: heap memory did not read back");
}

/// `MAX_WRITE` bytes of `x` in `.rodata`: the VMM's loader fills it, so `print=` costs no
/// interpreted fill loop (an emulated `rep stos` costs ~0.5 µs per 8 bytes on kvm_pvm).
static XS: [u8; MAX_WRITE] = [b'x'; MAX_WRITE];

/// `print=N writes=K [flood] [ring=…]`: `K` (or, with `flood`, endless) console writes of
/// `N` bytes of `x`.
///
/// Each write is one [`console::write`] of `N` bytes when `N` fits in one hypercall
/// ([`MAX_WRITE`], 64 KiB). A larger `N` is written in `MAX_WRITE` pieces, which is exactly
/// what the PV driver would send for one large buffer (and the UART is per byte anyway), so
/// the host sees the same exits either way.
fn print_x(p: Print, features: Features) {
    if let Some(transport) = p.ring {
        print_ring(p, transport, features);
        return;
    }
    let mut writes = 0;
    while p.flood || writes < p.writes {
        writes += 1;
        let mut left = p.bytes;
        while left != 0 {
            let n = left.min(MAX_WRITE);
            if let Err(status) = console::write(&XS[..n]) {
                panic!("console write of {n} bytes failed: {status}");
            }
            left -= n;
        }
    }
}

/// The console ring of `print=… ring=…`.
static PRINT_RING: Exclusive<Pages<4096>> = Exclusive::new(Pages::zeroed());
/// Ring slots, and the most requests queued per batch.
const PRINT_RING_SIZE: u32 = 32;
const PRINT_BATCH: usize = 16;

/// `print=N writes=K ring=T`: the writes through the console ring with transport `T`, in
/// batches of up to [`PRINT_BATCH`] requests of at most [`MAX_WRITE`] bytes, each batch
/// submitted (one doorbell when the host asks) and waited for. A request the host answers
/// `EAGAIN` (its per-service byte budget, docs/ABI.md) is sent again in the next batch;
/// any other failure panics.
fn print_ring(p: Print, transport: Transport, features: Features) {
    // A PV path checks its feature first (on a stock hypervisor there is no ring); the
    // transport itself is checked by the host, which refuses one it does not offer.
    if !features.contains(Features::CONSOLE_RING) {
        panic!("ring={transport:?}: the host does not offer the console ring (CONSOLE_RING)");
    }
    let mut ring = match ConsoleRing::register(&mut PRINT_RING.take().0, PRINT_RING_SIZE, transport)
    {
        Ok(ring) => ring,
        Err(e) => panic!("registering the console ring ({transport:?}): {e:?}"),
    };
    let mut writes = 0;
    while p.flood || writes < p.writes {
        writes += 1;
        let mut left = p.bytes;
        while left != 0 {
            // Queue up to PRINT_BATCH pieces covering the next bytes (all `x`).
            let mut queued = 0;
            let mut covered = 0;
            while queued < PRINT_BATCH && covered < left {
                let n = (left - covered).min(MAX_WRITE);
                if ring.queue(&XS[..n]).is_err() {
                    break;
                }
                queued += 1;
                covered += n;
            }
            ring.submit();
            let mut written = 0usize;
            let waited = ring.wait(u64::MAX, |rsp| match Status::try_from(rsp.status as u64) {
                Ok(Status::Ok) => written += rsp.written as usize,
                Ok(Status::EAGAIN) => {}
                other => panic!("console ring write failed: {other:?}"),
            });
            if let Err(e) = waited {
                panic!("console ring: {e:?}");
            }
            left -= written.min(left);
        }
    }
}

/// The clock page of the `user` check.
static USER_CLOCK: ClockPage = ClockPage::new();

/// Ring 3: returns `arg + 1` (proves the call and its argument and result).
extern "C" fn user_increment(arg: u64) -> u64 {
    arg + 1
}

/// `user`: runs two functions in ring 3 and prints what they returned: `41 + 1` (with the
/// cycles the ring-0 → ring-3 → ring-0 round trip took), and (when the host offers the PV
/// clock) two clock reads, which must not go backwards.
/// Panics (reported to the host) if a result is wrong.
fn user_check(boot: &BootInfo) {
    let t0 = pvkit_guest::tsc::rdtsc();
    let r = crate::user::call(user_increment, 41);
    let cycles = pvkit_guest::tsc::rdtsc() - t0;
    assert_eq!(r, 42, "ring 3 returned {r} for 41 + 1");
    println!("user: ring 3 returned {r} ({cycles} TSC cycles for the round trip)");
    if !Features::from_bits_truncate(boot.features).contains(Features::CLOCK) {
        println!("user: the host offers no PV clock");
        return;
    }
    let reader = match pvkit_guest::clock::register(&USER_CLOCK) {
        Ok(reader) => reader,
        Err(s) => panic!("registering the PV clock page: {s}"),
    };
    let t0 = crate::user::read_clock(&reader);
    let t1 = crate::user::read_clock(&reader);
    assert!(
        t0 != 0 && t1 >= t0,
        "PV clock read in ring 3: {t0} then {t1}"
    );
    println!("user: PV clock read in ring 3: {t0} ns, then {t1} ns");
}

/// Raises the requested CPU exception. The handler reports it and never returns.
fn fault(kind: FaultKind) -> ! {
    // SAFETY: in every arm the instruction faults before it changes any state; the
    // exception handler reports the fault and stops the VM, so execution never continues
    // past it. No Rust-visible memory is accessed.
    unsafe {
        match kind {
            FaultKind::InvalidOpcode => core::arch::asm!("ud2", options(nomem, nostack)),
            FaultKind::PageFault => core::arch::asm!(
                "mov byte ptr [{addr}], 0",
                addr = in(reg) UNMAPPED,
                options(nostack),
            ),
            FaultKind::GeneralProtection => core::arch::asm!(
                "mov {tmp}, qword ptr [{addr}]",
                addr = in(reg) NON_CANONICAL,
                tmp = out(reg) _,
                options(nostack, readonly),
            ),
            FaultKind::DivideError => core::arch::asm!(
                "div {zero}",
                zero = in(reg) 0u64,
                inout("rax") 1u64 => _,
                inout("rdx") 0u64 => _,
                options(nomem, nostack),
            ),
            FaultKind::DoubleFault => core::arch::asm!(
                "mov rsp, {addr}",
                "ud2",
                addr = in(reg) UNMAPPED,
                options(nomem, noreturn),
            ),
        }
    }
    unreachable!("{kind:?} fault returned")
}
