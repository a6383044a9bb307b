//! A minimal VM for probes: guest RAM slots, the long-mode boot area (identity-mapped 4 GiB,
//! flat GDT, an IDT whose gates point at the handlers of `guest/probe.S`), vCPUs entered
//! in long mode at a chosen entry point, and a `KVM_RUN` loop on its own thread with a
//! deadline (a vCPU stuck in the kernel, e.g. halted with no interrupt coming, is kicked
//! out with a signal).
// Probe code works on constant, probe-chosen values; the guests are our own programs.
#![allow(clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::guest_code as g;

/// The port guest programs report on (`OUT` with AL = code).
pub const REPORT_PORT: u16 = 0x500;
/// Code: the program finished.
pub const CODE_DONE: u8 = 0xff;
/// Code: an unexpected exception or interrupt vector was taken.
pub const CODE_FATAL: u8 = 0xfe;
/// Guest-physical data area of the programs (`CNT` in guest/probe.S).
pub const DATA: u64 = 0x30000;
/// Interrupts counted by the interrupt handlers.
pub const CNT: u64 = DATA;
/// #GP faults taken and skipped.
pub const GPCNT: u64 = DATA + 0x8;
/// Result slot 0.
pub const RES: u64 = DATA + 0x10;
/// Result slot 1.
pub const RES1: u64 = DATA + 0x18;
/// Marker written by the real-mode AP (0xcafe).
pub const APMARK: u64 = DATA + 0x100;
/// Marker written by the long-mode AP (0xbeef).
pub const APUP: u64 = DATA + 0x108;
/// IPIs received by the BSP.
pub const BSPCNT: u64 = DATA + 0x110;
/// IPIs received by the AP.
pub const APCNT: u64 = DATA + 0x118;
/// Interrupts acknowledged through the PV EOI flag.
pub const PVACK: u64 = DATA + 0x20;
/// A parameter area programs may read (e.g. the address list of `dirty_writer`).
pub const PARAMS: u64 = DATA + 0x800;
/// Initial stack of the BSP.
pub const BSP_STACK: u64 = 0x80000;
/// Initial stack of the AP.
pub const AP_STACK: u64 = 0x70000;

const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const PD0: u64 = 0x3000;
const GDT: u64 = 0x7000;
const IDT: u64 = 0x8000;
/// The size of the boot slot (slot 0) every probe VM has at guest-physical 0.
pub const BOOT_RAM: u64 = 4 << 20;

/// Errors of the probe harness.
#[derive(Debug, Error)]
pub enum HarnessError {
    /// A KVM ioctl failed.
    #[error("{what}: {source}")]
    Kvm {
        /// Which ioctl.
        what: &'static str,
        /// The errno.
        source: vmm_sys_util::errno::Error,
    },
    /// Guest memory could not be created or accessed.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The vCPU thread could not be started or did not come back.
    #[error("vCPU thread: {0}")]
    Thread(String),
}

/// Maps an errno to a [`HarnessError::Kvm`] for `what`.
pub fn kvm_err(what: &'static str) -> impl FnOnce(vmm_sys_util::errno::Error) -> HarnessError {
    move |source| HarnessError::Kvm { what, source }
}

/// A memory slot to add to a probe VM.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    /// Guest-physical start.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// `KVM_MEM_*` flags.
    pub flags: u32,
}

/// A probe VM: the KVM handles and guest RAM.
pub struct ProbeVm {
    /// `/dev/kvm`.
    pub kvm: Kvm,
    /// The VM.
    pub vm: Arc<VmFd>,
    /// Guest RAM: slot 0 is [`BOOT_RAM`] at 0, then the extra slots in order.
    pub mem: GuestMemoryMmap<()>,
    /// KVM's supported CPUID, given to every vCPU.
    pub cpuid: CpuId,
}

fn segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 0,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// The IDT: every vector to `fatal`, the ones the programs use to their handlers.
fn idt_bytes() -> Vec<u8> {
    let mut idt = vec![0u8; 256 * 16];
    let handlers: [(usize, u64); 6] = [
        (13, g::GP_HANDLER),
        (0x30, g::IRQ_XAPIC),
        (0x31, g::IRQ_XAPIC),
        (0x32, g::IRQ_X2APIC),
        (0x40, g::IPI_AP_HANDLER),
        (0x41, g::IPI_BSP_HANDLER),
    ];
    for v in 0..256usize {
        let mut h = handlers
            .iter()
            .find(|(n, _)| *n == v)
            .map_or(g::FATAL, |(_, h)| *h);
        if v == 0xff {
            h = g::SPURIOUS;
        }
        let e = &mut idt[v * 16..v * 16 + 16];
        e[0..2].copy_from_slice(&(h as u16).to_le_bytes());
        e[2..4].copy_from_slice(&0x08u16.to_le_bytes());
        e[4] = 0;
        e[5] = 0x8e; // present, DPL 0, 64-bit interrupt gate
        e[6..8].copy_from_slice(&((h >> 16) as u16).to_le_bytes());
        e[8..12].copy_from_slice(&((h >> 32) as u32).to_le_bytes());
    }
    idt
}

impl ProbeVm {
    /// A VM with the boot slot plus `extra` slots, the boot area and the code written; with
    /// the in-kernel irqchip (and PIT) if asked. Creating the irqchip must come before
    /// vCPUs, so it happens here.
    pub fn new(irqchip: bool, pit: bool, extra: &[Slot]) -> Result<Self, HarnessError> {
        let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let mut ranges = vec![(GuestAddress(0), BOOT_RAM as usize)];
        ranges.extend(extra.iter().map(|s| (GuestAddress(s.gpa), s.size as usize)));
        let mem = GuestMemoryMmap::<()>::from_ranges(&ranges)
            .map_err(|e| HarnessError::Memory(e.to_string()))?;
        let flags: Vec<u32> = std::iter::once(0)
            .chain(extra.iter().map(|s| s.flags))
            .collect();
        for (slot, (region, flags)) in mem.iter().zip(flags).enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|e| HarnessError::Memory(e.to_string()))?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mapping owned by `mem`, which lives as long as
            // the VM in this struct (fields drop in order: `vm` before `mem`).
            unsafe { vm.set_user_memory_region(r) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }
        if irqchip {
            vm.create_irq_chip()
                .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        }
        if pit {
            let cfg = kvm_bindings::kvm_pit_config::default();
            vm.create_pit2(cfg).map_err(kvm_err("KVM_CREATE_PIT2"))?;
        }
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let this = Self {
            kvm,
            vm: Arc::new(vm),
            mem,
            cpuid,
        };
        this.write_boot_area()?;
        Ok(this)
    }

    fn write(&self, gpa: u64, bytes: &[u8]) -> Result<(), HarnessError> {
        self.mem
            .write_slice(bytes, GuestAddress(gpa))
            .map_err(|e| HarnessError::Memory(e.to_string()))
    }

    /// Writes a little-endian `u64` into guest RAM.
    pub fn write_u64(&self, gpa: u64, v: u64) -> Result<(), HarnessError> {
        self.write(gpa, &v.to_le_bytes())
    }

    /// Reads a little-endian `u64` from guest RAM (0 if out of range).
    pub fn read_u64(&self, gpa: u64) -> u64 {
        self.mem.read_obj::<u64>(GuestAddress(gpa)).unwrap_or(0)
    }

    fn write_boot_area(&self) -> Result<(), HarnessError> {
        // PML4[0] -> PDPT; PDPT[0..4] -> four PDs of 2 MiB pages: identity map of 4 GiB.
        self.write_u64(PML4, PDPT | 3)?;
        for i in 0..4u64 {
            self.write_u64(PDPT + i * 8, (PD0 + i * 0x1000) | 3)?;
            let mut pd = Vec::with_capacity(4096);
            for j in 0..512u64 {
                let addr = ((i * 512 + j) << 21) | 0x83;
                pd.extend_from_slice(&addr.to_le_bytes());
            }
            self.write(PD0 + i * 0x1000, &pd)?;
        }
        let gdt: [u64; 3] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
        let gdt: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
        self.write(GDT, &gdt)?;
        self.write(IDT, &idt_bytes())?;
        self.write(g::CODE_BASE, g::CODE)
    }

    /// Creates vCPU `id` with KVM's supported CPUID (no registers set: it is in its reset
    /// state, which for an AP with the in-kernel irqchip means waiting for INIT/SIPI).
    pub fn vcpu(&self, id: u64) -> Result<VcpuFd, HarnessError> {
        let v = self
            .vm
            .create_vcpu(id)
            .map_err(kvm_err("KVM_CREATE_VCPU"))?;
        v.set_cpuid2(&self.cpuid)
            .map_err(kvm_err("KVM_SET_CPUID2"))?;
        Ok(v)
    }

    /// Creates vCPU `id` and puts it in long mode at `entry` with `RSP` = `stack`,
    /// `RDI`/`RSI` = `args`.
    pub fn long_mode_vcpu(
        &self,
        id: u64,
        entry: u64,
        stack: u64,
        args: [u64; 2],
    ) -> Result<VcpuFd, HarnessError> {
        let v = self.vcpu(id)?;
        set_long_mode(&v, entry, stack, args)?;
        Ok(v)
    }
}

/// Puts `v` in 64-bit mode at `entry` over the boot area's GDT, IDT and page tables.
pub fn set_long_mode(
    v: &VcpuFd,
    entry: u64,
    stack: u64,
    args: [u64; 2],
) -> Result<(), HarnessError> {
    let mut s = v.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    s.cs = segment(0x08, true);
    let d = segment(0x10, false);
    (s.ds, s.es, s.fs, s.gs, s.ss) = (d, d, d, d, d);
    s.gdt.base = GDT;
    s.gdt.limit = 23;
    s.idt.base = IDT;
    s.idt.limit = 256 * 16 - 1;
    s.cr0 = 1 | (1 << 4) | (1 << 5) | (1 << 16) | (1 << 31);
    s.cr3 = PML4;
    s.cr4 = 1 << 5;
    s.efer = (1 << 8) | (1 << 10) | (1 << 11);
    v.set_sregs(&s).map_err(kvm_err("KVM_SET_SREGS"))?;
    let r = kvm_bindings::kvm_regs {
        rip: entry,
        rsp: stack,
        rdi: args[0],
        rsi: args[1],
        rflags: 2,
        ..Default::default()
    };
    v.set_regs(&r).map_err(kvm_err("KVM_SET_REGS"))
}

/// One report of a guest program.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// The code (AL of the `OUT`).
    pub code: u8,
    /// When the host saw it.
    pub at: Instant,
    /// Exits to userspace so far, this one included.
    pub exits: u64,
}

/// How a vCPU run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// The program reported [`CODE_DONE`] or the event callback asked to stop.
    Finished,
    /// The deadline passed (the vCPU was kicked out).
    Timeout,
    /// The guest or KVM failed: a description.
    Failed(String),
}

/// What a vCPU run did.
#[derive(Debug)]
pub struct RunOutcome {
    /// The vCPU, for state reads after the run.
    pub vcpu: VcpuFd,
    /// How it ended.
    pub end: RunEnd,
    /// Exits to userspace in total.
    pub exits: u64,
    /// Exits by reason.
    pub by_reason: BTreeMap<String, u64>,
    /// The program's reports, in order.
    pub events: Vec<Event>,
}

impl RunOutcome {
    /// The first event with `code`.
    pub fn event(&self, code: u8) -> Option<Event> {
        self.events.iter().copied().find(|e| e.code == code)
    }

    /// Exits strictly between the first reports `a` and `b`, and the time between them.
    pub fn window(&self, a: u8, b: u8) -> Option<(u64, Duration)> {
        let (ea, eb) = (self.event(a)?, self.event(b)?);
        Some((
            eb.exits.saturating_sub(ea.exits + 1),
            eb.at.saturating_duration_since(ea.at),
        ))
    }

    /// The exit reasons as `reason×count, ...`.
    pub fn reasons(&self) -> String {
        let v: Vec<String> = self
            .by_reason
            .iter()
            .map(|(k, n)| format!("{k}×{n}"))
            .collect();
        v.join(", ")
    }
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 3
}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Without SA_RESTART, so KVM_RUN returns EINTR.
        let _ = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick);
    });
}

/// Runs `KVM_RUN` until the program reports [`CODE_DONE`], `on_event` returns false, a
/// failure, or `stop` is set (then [`RunEnd::Timeout`]). Every report is sent to `tx`.
pub fn run_loop(
    vcpu: &mut VcpuFd,
    stop: &AtomicBool,
    tx: &Sender<Event>,
    on_event: &mut dyn FnMut(&Event) -> bool,
) -> (RunEnd, u64, BTreeMap<String, u64>, Vec<Event>) {
    let mut exits = 0u64;
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    let mut events = Vec::new();
    let count = |by: &mut BTreeMap<String, u64>, r: String| *by.entry(r).or_default() += 1;
    loop {
        if stop.load(Ordering::SeqCst) {
            return (RunEnd::Timeout, exits, by_reason, events);
        }
        let r = vcpu.run();
        let end = match r {
            Ok(exit) => {
                exits += 1;
                match exit {
                    VcpuExit::IoOut(port, data) if port == REPORT_PORT => {
                        count(&mut by_reason, "report-port".into());
                        let ev = Event {
                            code: data.first().copied().unwrap_or(0),
                            at: Instant::now(),
                            exits,
                        };
                        events.push(ev);
                        let _ = tx.send(ev);
                        if ev.code == CODE_FATAL {
                            Some(RunEnd::Failed("guest took an unexpected vector".into()))
                        } else if ev.code == CODE_DONE || !on_event(&ev) {
                            Some(RunEnd::Finished)
                        } else {
                            None
                        }
                    }
                    VcpuExit::IoOut(port, _) => {
                        count(&mut by_reason, format!("io-out {port:#x}"));
                        None
                    }
                    VcpuExit::IoIn(port, data) => {
                        data.fill(0xff);
                        count(&mut by_reason, format!("io-in {port:#x}"));
                        None
                    }
                    VcpuExit::MmioWrite(addr, _) => {
                        count(&mut by_reason, format!("mmio-write {addr:#x}"));
                        None
                    }
                    VcpuExit::MmioRead(addr, data) => {
                        data.fill(0);
                        count(&mut by_reason, format!("mmio-read {addr:#x}"));
                        None
                    }
                    VcpuExit::Hlt => {
                        count(&mut by_reason, "hlt".into());
                        None
                    }
                    VcpuExit::Intr => {
                        exits -= 1;
                        None
                    }
                    VcpuExit::Shutdown => Some(RunEnd::Failed("shutdown (triple fault)".into())),
                    other => Some(RunEnd::Failed(format!("exit {other:?}"))),
                }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(RunEnd::Failed(format!("KVM_RUN: {e}"))),
        };
        if let Some(end) = end {
            return (end, exits, by_reason, events);
        }
    }
}

/// A vCPU running on its own thread.
pub struct VcpuThread {
    handle: JoinHandle<RunOutcome>,
    pthread: libc::pthread_t,
    stop: Arc<AtomicBool>,
    /// The program's reports as they happen.
    pub events: Receiver<Event>,
}

/// Starts `vcpu` on a thread; `on_event` sees every report and may end the run.
pub fn spawn(
    mut vcpu: VcpuFd,
    mut on_event: Box<dyn FnMut(&Event) -> bool + Send>,
) -> Result<VcpuThread, HarnessError> {
    install_kick_handler();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = channel();
    let (ptx, prx) = channel();
    let s = stop.clone();
    let handle = std::thread::Builder::new()
        .name("probe-vcpu".into())
        .spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            let _ = ptx.send(unsafe { libc::pthread_self() });
            let (end, exits, by_reason, events) = run_loop(&mut vcpu, &s, &tx, &mut *on_event);
            RunOutcome {
                vcpu,
                end,
                exits,
                by_reason,
                events,
            }
        })
        .map_err(|e| HarnessError::Thread(e.to_string()))?;
    let pthread = prx
        .recv()
        .map_err(|e| HarnessError::Thread(e.to_string()))?;
    Ok(VcpuThread {
        handle,
        pthread,
        stop,
        events: rx,
    })
}

impl VcpuThread {
    /// Waits for a report with `code` until `deadline`; returns it.
    pub fn wait_for(&self, code: u8, deadline: Instant) -> Option<Event> {
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.events.recv_timeout(left) {
                Ok(e) if e.code == code => return Some(e),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Waits for the run to end until `deadline`, then stops it (kicking it out of
    /// `KVM_RUN` with a signal until it returns).
    pub fn join(self, deadline: Instant) -> Result<RunOutcome, HarnessError> {
        while !self.handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.stop.store(true, Ordering::SeqCst);
        let give_up = Instant::now() + Duration::from_secs(5);
        while !self.handle.is_finished() {
            // SAFETY: the thread is alive (not finished) and owned by `handle`, so its
            // pthread_t is valid; the signal has a no-op handler installed.
            unsafe { libc::pthread_kill(self.pthread, kick_signal()) };
            std::thread::sleep(Duration::from_millis(2));
            if Instant::now() > give_up {
                return Err(HarnessError::Thread(
                    "vCPU did not leave KVM_RUN after 5 s of kicks".into(),
                ));
            }
        }
        self.handle
            .join()
            .map_err(|_| HarnessError::Thread("vCPU thread panicked".into()))
    }
}

/// Waits until `f()` holds or `deadline` passes; returns whether it held.
pub fn wait_until(deadline: Instant, mut f: impl FnMut() -> bool) -> bool {
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::hint::spin_loop();
        std::thread::yield_now();
    }
}

/// `VmRSS` of this process in KiB (0 if unreadable).
pub fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
