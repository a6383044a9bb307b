/*
 * pvkit ABI v1 for C guests: the wire contract between a paravirtualized guest and the
 * pvkit VMM (see docs/ABI.md). GENERATED from the pvkit-abi crate by cbindgen: do not edit;
 * run `PVKIT_REGENERATE_HEADER=1 cargo test -p pvkit-abi --test c_header` to regenerate.
 */

#ifndef PVKIT_ABI_H
#define PVKIT_ABI_H

#include <stdint.h>

// The balloon's page size: ranges are counted in 4 KiB pages.
#define PVKIT_BALLOON_PAGE_SIZE 4096

// Most ranges one inflate or deflate call carries (`E2BIG` beyond).
#define PVKIT_BALLOON_MAX_RANGES 512

// `BenchSample::flags`: the guest verified the data of this case and it was right.
#define PVKIT_SAMPLE_VERIFIED (1 << 0)

// `BenchSample::flags`: the guest's verification failed; the case must be reported FAILED.
#define PVKIT_SAMPLE_FAILED (1 << 1)

// `BenchSample::flags`: the case's timed loop ran in guest ring 3 (a vDSO-style clock read,
// a ring polled from user mode as with io_uring `SQPOLL`), not in ring 0. Informational:
// a host that does not know the bit ignores it.
#define PVKIT_SAMPLE_RING3 (1 << 2)

// `BenchSample::flags`: the raw cycle samples come from a separate latency pass run outside
// the phase markers, not from the timed loop between them (whose cost `cycles_total` then
// is, with no per-operation time reads inside). Informational: a host that does not know
// the bit ignores it.
#define PVKIT_SAMPLE_LATENCY_PASS (1 << 3)

// Most per-operation cycle samples the host reads from one [`BenchSample`].
#define PVKIT_MAX_SAMPLES 8192

// Most entries of an op log the host reads ([`crate::Hypercall::BenchResult`] a2).
#define PVKIT_MAX_OP_LOG 8192

// `OpRecord::op`: the guest read `len` bytes at `sector` into `addr`.
#define PVKIT_OP_READ 1

// `OpRecord::op`: the guest wrote `len` bytes from `addr` to `sector`.
#define PVKIT_OP_WRITE 2

// Bytes per sector. Offsets and lengths are in these units or multiples of them.
#define PVKIT_SECTOR_SIZE 512

// Most segments in one request.
#define PVKIT_MAX_SEGMENTS 8

// Most bytes one request may move (all segments together).
#define PVKIT_MAX_REQUEST_BYTES (1 << 20)

// The boot GDT.
#define PVKIT_GDT_ADDR 4096

// The [`BootInfo`] structure.
#define PVKIT_BOOT_INFO_ADDR 8192

// The kernel command line (NUL-terminated, at most [`CMDLINE_MAX`] bytes with the NUL).
#define PVKIT_CMDLINE_ADDR 12288

// Room for the command line.
#define PVKIT_CMDLINE_MAX 4096

// The boot page tables (PML4, then one PDPT, then page directories).
#define PVKIT_PAGE_TABLES 36864

// Lowest address of the boot stack.
#define PVKIT_BOOT_STACK_BOTTOM 65536

// Top of the boot stack (16-byte aligned).
#define PVKIT_BOOT_STACK_TOP 524288

// Initial `RSP`: as just after a `call`, so `(RSP + 8) % 16 == 0` as the SysV ABI expects.
#define PVKIT_ENTRY_RSP (PVKIT_BOOT_STACK_TOP - 8)

// Guest kernels load at or above this address.
#define PVKIT_KERNEL_MIN_ADDR 1048576

// The boot page tables identity-map this much (4 GiB).
#define PVKIT_IDENTITY_MAP_SIZE 4294967296

// The memory map: an array of [`MemoryRegion`] ([`BootInfo::memory_map_addr`]).
#define PVKIT_MEMORY_MAP_ADDR 16384

// Room for the memory map in the boot area (bytes).
#define PVKIT_MEMORY_MAP_MAX 4096

// `BootInfo::magic`: `"PVKITBI2"` as a little-endian `u64` (a literal, for the C header).
#define PVKIT_BOOT_MAGIC 3623500304970634832

// Most entries the memory map holds (a balloon fragments the map; the host never writes
// more).
#define PVKIT_MAX_MEMORY_REGIONS 128

// Call numbers of one class share this many low bits: the class is `nr >> CLASS_SHIFT`.
#define PVKIT_CLASS_SHIFT 8

// [`CLOCK_PAGE`] as arg0 of `RegisterRegion` (a literal, for the C header).
#define PVKIT_CLOCK_PAGE_REGION 294912

// `PvClock::flags`: the TSC is stable and synchronized across vCPUs.
#define PVKIT_TSC_STABLE (1 << 0)

// Largest buffer accepted by one [`crate::Hypercall::ConsoleWrite`] or one console ring
// request. Longer writes fail with `E2BIG`; guests split them.
#define PVKIT_MAX_WRITE (64 * 1024)

// The pvkit base leaf.
#define PVKIT_LEAF_BASE 1073741824

// The pvkit version and feature leaf.
#define PVKIT_LEAF_FEATURES 1073741825

// Where KVM's own paravirtual leaves are placed when offered alongside pvkit's.
#define PVKIT_KVM_LEAF_BASE 1073742080

// Capacity of [`FaultReport::message`].
#define PVKIT_MESSAGE_MAX 256

// `FaultReport::vector` when the report is a panic, not a CPU exception.
#define PVKIT_VECTOR_PANIC 4294967295

// The link MTU: the largest IP packet in one frame.
#define PVKIT_MTU 1500

// Length of the Ethernet header (destination, source, EtherType).
#define PVKIT_ETH_HEADER_LEN 14

// The largest frame: [`MTU`] plus the Ethernet header.
#define PVKIT_MAX_FRAME_LEN (PVKIT_MTU + PVKIT_ETH_HEADER_LEN)

// The smallest frame: a bare Ethernet header.
#define PVKIT_MIN_FRAME_LEN PVKIT_ETH_HEADER_LEN

// The note type of the ABI version note.
#define PVKIT_TYPE_ABI_VERSION 1

// The hypercall port: a 32-bit `out dx, eax` here is a hypercall. See [`crate::call`].
#define PVKIT_HYPERCALL 1280

// The null port: a write of any width exits to the VMM, which counts it and does nothing
// else. Benchmarks use it to measure the bare round trip of one port-I/O exit.
#define PVKIT_NULL 1281

// The interrupt test port: a byte write here makes the VMM raise one edge on the GSI
// [`IRQ_TEST_GSI`] through its irqfd, when the VM has the in-kernel interrupt controller
// (`pvkit bench` device `irq`). Writes of other values or widths are counted and ignored;
// reads return all ones. Each write is one exit and at most one interrupt.
#define PVKIT_IRQ_TEST 1282

// The GSI the interrupt test port raises: ISA IRQ 5 (PIC master line 5, IOAPIC pin 5).
#define PVKIT_IRQ_TEST_GSI 5

// The doorbell port: a 32-bit `out dx, eax` here notifies the queue whose
// [`crate::ring::QueueId`] wire value ([`crate::ring::QueueId::to_u32`],
// `device << 16 | queue`) is in `EAX`. One port serves every queue of every device. A
// doorbell may be served by the VMM in userspace or by an ioeventfd that matches the value,
// depending on the transport the guest chose when registering the queue. Writes of other
// widths or of values that name no registered queue are counted and ignored; reads return
// all ones.
#define PVKIT_DOORBELL 1296

// One past the last port of the pvkit range (`0x0500..0x0520`); the ports of the range
// that this version does not define are reserved.
#define PVKIT_PVKIT_PORTS_END 1312

// The 16550 UART (COM1) base port used by the emulated console.
#define PVKIT_COM1 1016

// The first GSI (IOAPIC pin) a queue may be bound to with
// [`crate::Hypercall::QueueInterrupt`]: the pins above the 16 ISA IRQs.
#define PVKIT_RING_IRQ_GSI_FIRST 16

// How many GSIs, from [`RING_IRQ_GSI_FIRST`], queues may be bound to (pins 16–23 of the
// 24-pin IOAPIC).
#define PVKIT_RING_IRQ_GSIS 8

// Largest ring size the host accepts (slots). Bounds host memory and work per batch.
#define PVKIT_MAX_RING_SIZE 256

// Size of [`RingHeader`]; request slots start at this offset.
#define PVKIT_HEADER_SIZE 64

// `host_flags`: a host thread polls `req_prod`; the guest must not ring the doorbell.
#define PVKIT_HOST_POLLING (1 << 0)

// `host_flags`: the host found the ring corrupt and stopped servicing it.
#define PVKIT_BROKEN (1 << 1)

// Bit 15 of a region id's index: set for a device page ([`PageId`]), clear for a queue
// ([`QueueId`]).
#define PVKIT_PAGE_REGION 32768

// [`CONSOLE_QUEUE`]'s wire value (doorbell value, `RegisterRegion` arg0; a literal for the
// C header).
#define PVKIT_CONSOLE_QUEUE_ID 65536

// [`BLOCK_QUEUE`]'s wire value.
#define PVKIT_BLOCK_QUEUE_ID 131072

// [`NET_TX_QUEUE`]'s wire value.
#define PVKIT_NET_TX_QUEUE_ID 196608

// [`NET_RX_QUEUE`]'s wire value.
#define PVKIT_NET_RX_QUEUE_ID 196609

// `RegisterRegion` flags (arg3): the region belongs to the calling vCPU. The host keeps
// one such region per vCPU (e.g. each vCPU's clock page); without the flag the region is
// the VM's. A device that has no per-vCPU form of a region answers `EINVAL`.
#define PVKIT_REGION_PER_VCPU (1 << 8)

// `RegisterRegion` flags (arg3): the bits that hold a queue's [`Transport`] (0 for pages).
#define PVKIT_REGION_TRANSPORT_MASK 255

// `RegisterRegion` flags (arg3): every bit this version defines; others are `EINVAL`.
#define PVKIT_REGION_FLAGS_KNOWN (PVKIT_REGION_TRANSPORT_MASK | PVKIT_REGION_PER_VCPU)

// `RingHeader::req_prod`.
#define PVKIT_REQ_PROD 0

// `RingHeader::req_event`.
#define PVKIT_REQ_EVENT 4

// `RingHeader::rsp_prod`.
#define PVKIT_RSP_PROD 8

// `RingHeader::rsp_event`.
#define PVKIT_RSP_EVENT 12

// `RingHeader::size`.
#define PVKIT_SIZE 16

// `RingHeader::host_flags`.
#define PVKIT_HOST_FLAGS 20

// The longest a [`crate::Hypercall::LockWait`] blocks without a kick, in microseconds.
#define PVKIT_LOCK_WAIT_MAX_US 10000

// [`STEAL_PAGE`] as arg0 of `RegisterRegion` (a literal, for the C header).
#define PVKIT_STEAL_PAGE_REGION 294913

// The host refreshes a registered steal page at most this often (per vCPU).
#define PVKIT_STEAL_UPDATE_MS 10

// The major number of [`ABI_VERSION`] (also for C: `PVKIT_ABI_VERSION_MAJOR`).
#define PVKIT_ABI_VERSION_MAJOR 2

// The minor number of [`ABI_VERSION`].
#define PVKIT_ABI_VERSION_MINOR 0

// A block operation.
enum PVKIT_BlockOp
#if defined(__cplusplus) || __STDC_VERSION__ >= 202311L
  : uint32_t
#endif // defined(__cplusplus) || __STDC_VERSION__ >= 202311L
 {
  // Read `sector..` into the segments, in order.
  PVKIT_BLOCK_OP_READ = 1,
  // Write the segments, in order, to `sector..`.
  PVKIT_BLOCK_OP_WRITE = 2,
  // Make every completed write durable (fdatasync on the host). No segments.
  PVKIT_BLOCK_OP_FLUSH = 3,
};
#ifndef __cplusplus
#if __STDC_VERSION__ >= 202311L
typedef enum PVKIT_BlockOp PVKIT_BlockOp;
#else
typedef uint32_t PVKIT_BlockOp;
#endif // __STDC_VERSION__ >= 202311L
#endif // __cplusplus

// A hypercall number, placed in `EAX`. The discriminant is the wire number; it lies in
// the range of its [`DeviceClass`] ([`Hypercall::class`]).
enum PVKIT_Hypercall
#if defined(__cplusplus) || __STDC_VERSION__ >= 202311L
  : uint32_t
#endif // defined(__cplusplus) || __STDC_VERSION__ >= 202311L
 {
  // `RDX` ← the host's ABI version ([`crate::AbiVersion::to_u64`]). No arguments.
  PVKIT_HYPERCALL_ABI_VERSION = 1,
  // `RDX` ← the host's feature bits ([`crate::cpuid::Features`]). No arguments.
  PVKIT_HYPERCALL_FEATURES = 2,
  // Stop the VM; the VMM process exits with arg0 & 0xff as its status. Does not return.
  PVKIT_HYPERCALL_EXIT = 3,
  // Report a fatal guest fault or panic and stop the VM. arg0 = GPA of a
  // [`crate::fault::FaultReport`]. Does not return (if the report itself is unreadable,
  // the VM is still stopped and the VMM says so).
  PVKIT_HYPERCALL_REPORT_FAULT = 4,
  // Register a shared-memory region of a device. arg0 = [`crate::ring::RegionId`] (a
  // device's queue, or one of its pages), arg1 = GPA (4 KiB aligned), arg2 = length in
  // bytes, arg3 = flags: for a queue the [`crate::ring::Transport`] in bits 0–7;
  // [`crate::ring::REGION_PER_VCPU`] registers the region for the calling vCPU. Other
  // bits are reserved (`EINVAL`). Registering the same region again replaces it.
  PVKIT_HYPERCALL_REGISTER_REGION = 5,
  // Ask the host to service a registered queue now (the synchronous doorbell, usable
  // when the queue's transport is a doorbell served in userspace). arg0 =
  // [`crate::ring::QueueId`] (the value a doorbell write carries).
  PVKIT_HYPERCALL_RING_KICK = 6,
  // Bind a queue's completions to an interrupt (or back to polling), offered with
  // [`crate::cpuid::Features::RING_IRQ`]. arg0 = [`crate::ring::QueueId`], arg1 = GSI
  // (an IOAPIC pin in [`crate::ring::RING_IRQ_GSI_FIRST`]`..`
  // [`crate::ring::RING_IRQ_GSI_FIRST`]` + `[`crate::ring::RING_IRQ_GSIS`]; 0 = no
  // interrupt, back to polling), arg2 = flags (0; others `EINVAL`). Once bound, the host
  // raises one edge on the GSI after publishing responses when the guest's `rsp_event`
  // lies in the newly published range (the event-index rule, [`crate::ring`]). The
  // binding outlives re-registrations of the queue. `EOPNOTSUPP`: no such queue or no
  // interrupts; `EINVAL`: GSI outside the range or unknown flags.
  PVKIT_HYPERCALL_QUEUE_INTERRUPT = 7,
  // Write bytes to the host console. arg0 = GPA of the bytes, arg1 = length
  // (at most [`crate::console::MAX_WRITE`]). `RDX` ← bytes written.
  PVKIT_HYPERCALL_CONSOLE_WRITE = 256,
  // `RDX` ← capacity of the PV block device in 512-byte sectors. No arguments.
  PVKIT_HYPERCALL_BLOCK_CAPACITY = 512,
  // One synchronous block request. arg0 = GPA of a [`crate::block::BlockRequest`].
  // `RDX` ← bytes transferred. The request's status is the call's status.
  PVKIT_HYPERCALL_BLOCK_IO = 513,
  // `RDX` ← the PV network device's MAC address and MTU ([`crate::net::NetInfo`]). No
  // arguments.
  PVKIT_HYPERCALL_NET_INFO = 768,
  // Send one Ethernet frame synchronously (one exit per frame, the Solo5 `net_write`
  // baseline). arg0 = GPA of the frame, arg1 = its length
  // ([`crate::net::MIN_FRAME_LEN`]`..=`[`crate::net::MAX_FRAME_LEN`]: `EINVAL` below,
  // `E2BIG` above). `RDX` ← bytes sent. A frame the host backend drops is still `Ok`.
  PVKIT_HYPERCALL_NET_SEND = 769,
  // Start another vCPU already in 64-bit mode (PV vCPU bring-up). arg0 = target vCPU
  // index, arg1 = entry `RIP`, arg2 = `RSP`, arg3 = the target's `RDI`. The target runs
  // on the boot GDT and page tables of [`crate::boot`] with interrupts off. `EINVAL`:
  // the target is the caller, out of range, or `RIP`/`RSP` are not canonical; `EBUSY`:
  // the target was already started (by this call or by INIT-SIPI).
  PVKIT_HYPERCALL_VCPU_UP = 1024,
  // Send one fixed-delivery interrupt to each vCPU of a bitmap (PV IPI, one exit for any
  // number of targets; [`crate::cpuid::Features::PV_IPI`]). arg0 = bitmap (bit `i` targets
  // vCPU `arg2 + i`), arg1 = vector (`0x20`–`0xff`), arg2 = the vCPU of bit 0, arg3 = 0
  // (reserved). `EINVAL`: an empty bitmap, a target that does not exist, a vector below
  // `0x20` or above `0xff`, arg3 ≠ 0; nothing is sent then. `RDX` ← interrupts delivered.
  PVKIT_HYPERCALL_SEND_IPI = 1025,
  // PV spinlock slow path: block the calling vCPU's thread on the host until another
  // vCPU kicks it ([`Hypercall::LockKick`]) or a bounded host timeout
  // ([`crate::spinlock::LOCK_WAIT_MAX_US`]) passes, then return. A kick that arrived
  // before the call (and after the previous `LockWait` returned) is remembered, one per
  // vCPU, and makes the call return at once. arg0 = flags (none defined: must be 0,
  // else `EINVAL`). `RDX` ← 1 if a kick ended the wait, 0 on timeout. The guest must
  // re-check its lock after every return ([`crate::spinlock`]).
  PVKIT_HYPERCALL_LOCK_WAIT = 1026,
  // Wake vCPU arg0 from [`Hypercall::LockWait`] (or make its next `LockWait` return at
  // once). arg1 = flags (must be 0). `EINVAL`: the target is out of range or flags are
  // set. `RDX` ← 1 if the target was blocked in `LockWait`, 0 if the kick was left
  // pending.
  PVKIT_HYPERCALL_LOCK_KICK = 1027,
  // Give pages back to the host (the balloon, [`crate::balloon`]). arg0 = GPA of an
  // array of [`crate::balloon::BalloonRange`], arg1 = its count (at most
  // [`crate::balloon::BALLOON_MAX_RANGES`]). All ranges are validated before any is
  // acted on. `RDX` ← pages inflated.
  PVKIT_HYPERCALL_BALLOON_INFLATE = 1280,
  // Take ballooned pages back (zero-filled). Arguments as [`Hypercall::BalloonInflate`];
  // every page must be ballooned. `RDX` ← pages deflated.
  PVKIT_HYPERCALL_BALLOON_DEFLATE = 1281,
  // `RDX` ← the number of 4 KiB pages currently ballooned. No arguments.
  PVKIT_HYPERCALL_BALLOON_INFO = 1282,
  // Free-page hint for live migration ([`crate::balloon`]): the pages of an array of
  // [`crate::balloon::BalloonRange`] (arg0 = its GPA, arg1 = its count, at most
  // [`crate::balloon::BALLOON_MAX_RANGES`]) are free, so a migration need not send them
  // unless the guest writes them after the hint. The pages stay the guest's (nothing is
  // released); their content after a migration is undefined until written. Ranges follow
  // the balloon's rules, overlaps and ballooned pages allowed. `RDX` ← pages recorded:
  // 0 when no migration is tracking dirty pages (the hint is dropped; hint again later).
  PVKIT_HYPERCALL_FREE_PAGE_HINT = 1283,
  // The host's balloon target ([`crate::balloon::BalloonTarget`], offered with
  // [`crate::cpuid::Features::BALLOON_TARGET`]): `RDX` ← the target in 4 KiB pages
  // (bits 0–31) and its generation (bits 32–63), which the host increments on every
  // target it sets, the same value included. arg0 = flags (0; any other value is
  // `EINVAL`, reserved for a change-interrupt binding). The target is advice: the
  // guest inflates or deflates toward it when it can (virtio-balloon's `num_pages`);
  // the host only counts ([`crate::balloon`] "The host-set target").
  PVKIT_HYPERCALL_BALLOON_TARGET = 1284,
  // Mark the beginning or end of a benchmark phase so the host can attribute exits to it.
  // arg0 = phase id ([`crate::bench::CaseId`] packed), arg1 = [`crate::bench::PhaseMark`],
  // arg2 = operations done in the phase (at `End`).
  PVKIT_HYPERCALL_BENCH_PHASE = 3840,
  // Report a benchmark sample. arg0 = GPA of a [`crate::bench::BenchSample`]; optionally
  // arg1 = GPA of an op log (`[crate::bench::OpRecord]`) and arg2 = its length
  // (≤ [`crate::bench::MAX_OP_LOG`]; 0 = no log) for host-side data verification.
  PVKIT_HYPERCALL_BENCH_RESULT = 3841,
};
#ifndef __cplusplus
#if __STDC_VERSION__ >= 202311L
typedef enum PVKIT_Hypercall PVKIT_Hypercall;
#else
typedef uint32_t PVKIT_Hypercall;
#endif // __STDC_VERSION__ >= 202311L
#endif // __cplusplus

// The type of a [`MemoryRegion`].
enum PVKIT_MemoryKind
#if defined(__cplusplus) || __STDC_VERSION__ >= 202311L
  : uint32_t
#endif // defined(__cplusplus) || __STDC_VERSION__ >= 202311L
 {
  // Free RAM the guest may use.
  PVKIT_MEMORY_KIND_USABLE = 1,
  // RAM in use by the boot area, or by the loaded kernel image.
  PVKIT_MEMORY_KIND_RESERVED = 2,
};
#ifndef __cplusplus
#if __STDC_VERSION__ >= 202311L
typedef enum PVKIT_MemoryKind PVKIT_MemoryKind;
#else
typedef uint32_t PVKIT_MemoryKind;
#endif // __STDC_VERSION__ >= 202311L
#endif // __cplusplus

// arg1 of [`crate::Hypercall::BenchPhase`].
enum PVKIT_PhaseMark
#if defined(__cplusplus) || __STDC_VERSION__ >= 202311L
  : uint64_t
#endif // defined(__cplusplus) || __STDC_VERSION__ >= 202311L
 {
  // The case starts after this call.
  PVKIT_PHASE_MARK_BEGIN = 1,
  // The case ended before this call.
  PVKIT_PHASE_MARK_END = 2,
};
#ifndef __cplusplus
#if __STDC_VERSION__ >= 202311L
typedef enum PVKIT_PhaseMark PVKIT_PhaseMark;
#else
typedef uint64_t PVKIT_PhaseMark;
#endif // __STDC_VERSION__ >= 202311L
#endif // __cplusplus

// The result of a hypercall, as returned in `RAX`: `0` for success or a negative
// errno-style value. The numbers are Linux's errno values, negated.
enum PVKIT_Status
#if defined(__cplusplus) || __STDC_VERSION__ >= 202311L
  : int64_t
#endif // defined(__cplusplus) || __STDC_VERSION__ >= 202311L
 {
  // Success.
  PVKIT_STATUS_OK = 0,
  // The caller may not do this.
  PVKIT_STATUS_EPERM = -1,
  // The host failed to perform the I/O (host read/write/flush error).
  PVKIT_STATUS_EIO = -5,
  // An argument list (segment count, batch) is longer than the documented maximum.
  PVKIT_STATUS_E2BIG = -7,
  // The resource is busy; retry later.
  PVKIT_STATUS_EAGAIN = -11,
  // The host could not allocate what the request needs.
  PVKIT_STATUS_ENOMEM = -12,
  // A guest-physical address range is not entirely inside guest RAM.
  PVKIT_STATUS_EFAULT = -14,
  // The resource is already in use (e.g. a ring is already registered).
  PVKIT_STATUS_EBUSY = -16,
  // An argument is invalid (bad alignment, bad length, bad enum value).
  PVKIT_STATUS_EINVAL = -22,
  // The host's backing store is full.
  PVKIT_STATUS_ENOSPC = -28,
  // A value is outside the permitted range (e.g. sector past the end of the disk).
  PVKIT_STATUS_ERANGE = -34,
  // Unknown hypercall number.
  PVKIT_STATUS_ENOSYS = -38,
  // The call is known but this host does not offer it (feature not present).
  PVKIT_STATUS_EOPNOTSUPP = -95,
};
#ifndef __cplusplus
#if __STDC_VERSION__ >= 202311L
typedef enum PVKIT_Status PVKIT_Status;
#else
typedef int64_t PVKIT_Status;
#endif // __STDC_VERSION__ >= 202311L
#endif // __cplusplus

// How the host learns that a ring has new requests (arg3 of
// [`crate::Hypercall::RegisterRegion`] for a ring).
enum PVKIT_Transport
#if defined(__cplusplus) || __STDC_VERSION__ >= 202311L
  : uint32_t
#endif // defined(__cplusplus) || __STDC_VERSION__ >= 202311L
 {
  // The doorbell port exits to the VMM, which services the ring before the vCPU resumes
  // (responses are ready when the `out` instruction completes). One exit per batch.
  PVKIT_TRANSPORT_DOORBELL = 1,
  // The doorbell port is an ioeventfd: KVM signals a host I/O thread in the kernel and
  // the vCPU continues at once, with no exit to userspace. The guest polls `rsp_prod`.
  PVKIT_TRANSPORT_DOORBELL_EVENTFD = 2,
  // A host I/O thread polls `req_prod`; the host sets [`HOST_POLLING`] and the guest
  // never rings. Zero exits; costs a host core while the ring is busy.
  PVKIT_TRANSPORT_HOST_POLL = 3,
};
#ifndef __cplusplus
#if __STDC_VERSION__ >= 202311L
typedef enum PVKIT_Transport PVKIT_Transport;
#else
typedef uint32_t PVKIT_Transport;
#endif // __STDC_VERSION__ >= 202311L
#endif // __cplusplus

// A version of the pvkit ABI.
//
// Compatibility rule: a host accepts a guest whose `major` equals its own, whatever its
// `minor`. Feature bits are the only gate within a major version: a guest built for a newer
// minor checks the features it needs ([`crate::cpuid::Features`]) and does without the
// rest. A guest built for another major version is refused at load time with both
// versions in the message.
typedef struct {
  // Incompatible changes bump this.
  uint32_t major;
  // Backwards-compatible additions bump this.
  uint32_t minor;
} PVKIT_AbiVersion;

// One range of guest-physical pages in an inflate or deflate call.
typedef struct {
  // Guest-physical address of the first page (4 KiB aligned).
  uint64_t gpa;
  // Number of 4 KiB pages (at least 1).
  uint64_t pages;
} PVKIT_BalloonRange;

// One case's guest-side measurements ([`crate::Hypercall::BenchResult`]).
//
// Percentiles are expensive to compute where guest ring 0 is interpreted, so a guest may
// leave `cycles_median`/`cycles_p99` at 0 and hand the host its raw samples instead
// (`samples_addr`, `sample_count`): the host then computes both.
typedef struct {
  // [`CaseId::to_u64`].
  uint64_t case_;
  // Operations done.
  uint64_t ops;
  // Payload bytes moved.
  uint64_t bytes;
  // Guest TSC cycles for the whole phase.
  uint64_t cycles_total;
  // Median guest cycles per operation, or 0 if the host should compute it from samples.
  uint64_t cycles_median;
  // 99th percentile guest cycles per operation, or 0 (as above).
  uint64_t cycles_p99;
  // [`SAMPLE_VERIFIED`], [`SAMPLE_FAILED`], [`SAMPLE_RING3`], [`SAMPLE_LATENCY_PASS`];
  // other bits 0.
  uint32_t flags;
  // Number of `u64` entries at `samples_addr` (≤ [`MAX_SAMPLES`]; 0 = none).
  uint32_t sample_count;
  // GPA of `[u64; sample_count]`: guest cycles per operation, one entry per operation or
  // per batch of operations (each already divided by the batch size).
  uint64_t samples_addr;
  // Case-specific value (e.g. maximum clock disagreement in ns).
  uint64_t extra;
} PVKIT_BenchSample;

// One guest buffer of a request.
typedef struct {
  // Guest-physical address of the buffer.
  uint64_t addr;
  // Length in bytes: a non-zero multiple of [`SECTOR_SIZE`].
  uint32_t len;
  // Zero.
  uint32_t reserved;
} PVKIT_BlockSegment;

// A block request. The segments are contiguous on disk starting at `sector`.
//
// The host rejects with `EINVAL` a bad `op`, `nr_segments` of 0 for reads and writes,
// a segment length that is zero or not a multiple of [`SECTOR_SIZE`]; with `E2BIG` more
// than [`MAX_SEGMENTS`] segments or more than [`MAX_REQUEST_BYTES`]; with `ERANGE` a range
// past the end of the disk; with `EFAULT` a segment outside guest RAM; with `EPERM` a write
// to a read-only disk; with `EIO`/`ENOSPC` a host I/O failure. Nothing is written to the
// disk unless every check passed. A flush ignores `sector` and the segments; `reserved`
// fields are ignored in v1 (guests must zero them).
typedef struct {
  // Echoed in the response.
  uint64_t id;
  // A [`BlockOp`] value.
  uint32_t op;
  // Valid entries in `segments`.
  uint32_t nr_segments;
  // First sector.
  uint64_t sector;
  // The buffers.
  PVKIT_BlockSegment segments[PVKIT_MAX_SEGMENTS];
} PVKIT_BlockRequest;

// A block ring response.
typedef struct {
  // The request's `id`.
  uint64_t id;
  // A [`crate::Status`] raw value; read it typed with [`BlockResponse::status`].
  int64_t status;
  // Bytes transferred.
  uint64_t bytes;
} PVKIT_BlockResponse;

// What the VMM tells the guest at entry. Pointed to by `RDI`.
//
// The structure can grow: `size` is its size as the host wrote it. A later minor version
// appends fields; a guest reads a field only if `size` covers it, and ignores bytes
// beyond the fields it knows.
typedef struct {
  // [`BOOT_MAGIC`].
  uint64_t magic;
  // The size of this structure in bytes as the host wrote it (`size_of::<BootInfo>()`
  // for this version; more in a later minor).
  uint32_t size;
  // Zero.
  uint32_t reserved0;
  // The host's ABI version ([`crate::AbiVersion::to_u64`]).
  uint64_t abi_version;
  // The host's feature bits ([`crate::cpuid::Features`]).
  uint64_t features;
  // Total guest RAM in bytes (RAM is one range starting at 0).
  uint64_t mem_size;
  // GPA of the command line (NUL-terminated).
  uint64_t cmdline_addr;
  // Length of the command line in bytes, without the NUL.
  uint64_t cmdline_len;
  // The TSC frequency in kHz as the host knows it (0 if unknown).
  uint64_t tsc_khz;
  // GPA of the memory map: `memory_map_len` [`MemoryRegion`]s, sorted by address,
  // non-overlapping, inside the slot `[MEMORY_MAP_ADDR, MEMORY_MAP_ADDR + MEMORY_MAP_MAX)`.
  uint64_t memory_map_addr;
  // Number of entries of the memory map (at most [`MAX_MEMORY_REGIONS`]).
  uint32_t memory_map_len;
  // Zero.
  uint32_t reserved1;
} PVKIT_BootInfo;

// A console ring request: write `len` bytes at guest-physical `addr`.
typedef struct {
  // Guest-physical address of the bytes.
  uint64_t addr;
  // Number of bytes (at most [`MAX_WRITE`]).
  uint32_t len;
  // Echoed in the response.
  uint32_t id;
} PVKIT_ConsoleRequest;

// A console ring response.
typedef struct {
  // A [`crate::Status`] raw value.
  int64_t status;
  // The request's `id`.
  uint32_t id;
  // Bytes written.
  uint32_t written;
} PVKIT_ConsoleResponse;

// A fatal guest fault (CPU exception) or panic. The VMM prints it and exits non-zero.
typedef struct {
  // Exception vector (0–31), or [`VECTOR_PANIC`].
  uint32_t vector;
  // Length of the valid prefix of `message` (clamped to [`MESSAGE_MAX`] by the host).
  uint32_t message_len;
  // The exception's error code, or 0.
  uint64_t error_code;
  // `RIP` at the fault (for a panic: 0).
  uint64_t rip;
  // `CR2` (page faults), or 0.
  uint64_t cr2;
  // UTF-8 text (invalid sequences are replaced by the host).
  uint8_t message[PVKIT_MESSAGE_MAX];
} PVKIT_FaultReport;

// What the host offers. Unknown bits are reserved and must be ignored by guests.
typedef uint64_t PVKIT_Features;
// [`crate::Hypercall::ConsoleWrite`].
#define PVKIT_Features_CONSOLE (uint64_t)(1 << 0)
// The console request ring ([`crate::ring::CONSOLE_QUEUE`]).
#define PVKIT_Features_CONSOLE_RING (uint64_t)(1 << 1)
// The PV block device: [`crate::Hypercall::BlockIo`] and
// [`crate::Hypercall::BlockCapacity`]. Set only when the VM has a disk
// (`pvkit run --disk`).
#define PVKIT_Features_BLOCK (uint64_t)(1 << 2)
// The block request ring ([`crate::ring::BLOCK_QUEUE`]). Set only with a disk.
#define PVKIT_Features_BLOCK_RING (uint64_t)(1 << 3)
// Ring doorbells served by an ioeventfd ([`crate::ring::Transport::DoorbellEventfd`]).
#define PVKIT_Features_RING_EVENTFD (uint64_t)(1 << 4)
// Rings polled by a host thread ([`crate::ring::Transport::HostPoll`]).
#define PVKIT_Features_RING_POLL (uint64_t)(1 << 5)
// The PV clock page ([`crate::clock::PvClock`]).
#define PVKIT_Features_CLOCK (uint64_t)(1 << 6)
// Benchmark phase markers and results.
#define PVKIT_Features_BENCH (uint64_t)(1 << 7)
// KVM's own kvmclock is exposed at [`KVM_LEAF_BASE`].
#define PVKIT_Features_KVMCLOCK (uint64_t)(1 << 8)
// The PV network device: [`crate::Hypercall::NetInfo`] and
// [`crate::Hypercall::NetSend`]. Set only when the VM has a PV NIC.
#define PVKIT_Features_NET (uint64_t)(1 << 9)
// The network rings ([`crate::ring::NET_TX_QUEUE`], [`crate::ring::NET_RX_QUEUE`]).
// Set only with a PV NIC.
#define PVKIT_Features_NET_RING (uint64_t)(1 << 10)
// The memory balloon: [`crate::Hypercall::BalloonInflate`],
// [`crate::Hypercall::BalloonDeflate`], [`crate::Hypercall::BalloonInfo`]
// ([`crate::balloon`]).
#define PVKIT_Features_BALLOON (uint64_t)(1 << 12)
// Ring completions by interrupt: [`crate::Hypercall::QueueInterrupt`] binds a
// queue to a GSI of the in-kernel IOAPIC, and the host honours the guest's
// `rsp_event` (event-index suppression: one interrupt per batch of responses).
// Set when the VM has an in-kernel interrupt controller and rings.
#define PVKIT_Features_RING_IRQ (uint64_t)(1 << 16)
// PV IPIs: [`crate::Hypercall::SendIpi`] (a CPU bitmap per call). Set only with
// more than one vCPU.
#define PVKIT_Features_PV_IPI (uint64_t)(1 << 13)
// PV spinlocks: [`crate::Hypercall::LockWait`] and [`crate::Hypercall::LockKick`]
// ([`crate::spinlock`]). Set only with more than one vCPU.
#define PVKIT_Features_PV_SPINLOCK (uint64_t)(1 << 14)
// The per-vCPU steal-time page ([`crate::spinlock::STEAL_PAGE`]).
#define PVKIT_Features_STEAL_TIME (uint64_t)(1 << 15)
// Free-page hints for live migration: [`crate::Hypercall::FreePageHint`].
#define PVKIT_Features_FREE_PAGE_HINT (uint64_t)(1 << 18)
// The host-set balloon target: [`crate::Hypercall::BalloonTarget`]
// ([`crate::balloon::BalloonTarget`]). Offered with [`Features::BALLOON`].
#define PVKIT_Features_BALLOON_TARGET (uint64_t)(1 << 19)

// One entry of the memory map.
typedef struct {
  // Guest-physical start address.
  uint64_t start;
  // Length in bytes.
  uint64_t len;
  // A [`MemoryKind`] value.
  uint32_t kind;
  // Zero.
  uint32_t reserved;
} PVKIT_MemoryRegion;

// A receive ring request: an empty buffer of `capacity` bytes at guest-physical `addr`
// for the host to fill with one frame. Post buffers of [`MAX_FRAME_LEN`] bytes or more.
typedef struct {
  // Guest-physical address of the buffer.
  uint64_t addr;
  // Buffer capacity in bytes.
  uint32_t capacity;
  // Echoed in the response.
  uint32_t id;
} PVKIT_NetRxRequest;

// A receive ring response: the frame now in the buffer, or why the buffer was refused.
typedef struct {
  // A [`crate::Status`] raw value: `Ok`, `E2BIG` (the frame was larger than the
  // buffer; frame dropped), `EFAULT` (buffer outside RAM; frame dropped).
  int64_t status;
  // The request's `id`.
  uint32_t id;
  // Bytes written (the frame length; 0 on failure).
  uint32_t len;
} PVKIT_NetRxResponse;

// A transmit ring request: send the frame of `len` bytes at guest-physical `addr`.
typedef struct {
  // Guest-physical address of the frame.
  uint64_t addr;
  // Frame length in bytes ([`MIN_FRAME_LEN`]`..=`[`MAX_FRAME_LEN`]).
  uint32_t len;
  // Echoed in the response.
  uint32_t id;
} PVKIT_NetTxRequest;

// A transmit ring response.
typedef struct {
  // A [`crate::Status`] raw value.
  int64_t status;
  // The request's `id`.
  uint32_t id;
  // Bytes taken (the frame length; 0 on failure).
  uint32_t len;
} PVKIT_NetTxResponse;

// One logged block operation, for host-side verification. Buffers named by a log must not
// be modified by the guest between the operation and the `BenchResult` call, except by
// later logged operations (the host replays the log in order: the last operation on each
// buffer and each sector decides what must match).
typedef struct {
  // First sector on disk.
  uint64_t sector;
  // Guest-physical address of the buffer.
  uint64_t addr;
  // Bytes (a multiple of [`crate::block::SECTOR_SIZE`]).
  uint32_t len;
  // [`OP_READ`] or [`OP_WRITE`].
  uint32_t op;
} PVKIT_OpRecord;

// The clock record. Same layout as KVM's `pvclock_vcpu_time_info`.
typedef struct {
  // Odd while the host updates the record.
  uint32_t version;
  // Zero.
  uint32_t pad0;
  // Guest TSC value at which `system_time` was taken.
  uint64_t tsc_timestamp;
  // Nanoseconds at `tsc_timestamp`.
  uint64_t system_time;
  // Multiplier, a 32.32 fixed-point fraction applied after `tsc_shift`.
  uint32_t tsc_to_system_mul;
  // Shift applied to a TSC delta before the multiply (negative: right shift).
  int8_t tsc_shift;
  // [`TSC_STABLE`].
  uint8_t flags;
  // Zero.
  uint8_t pad[2];
} PVKIT_PvClock;

// The ring header, at offset 0 of the region.
typedef struct {
  // Guest: number of requests published (free-running).
  uint32_t req_prod;
  // Host: notify me when `req_prod` passes this value.
  uint32_t req_event;
  // Host: number of responses published (free-running).
  uint32_t rsp_prod;
  // Guest: notify me when `rsp_prod` passes this value (reserved in 2.0).
  uint32_t rsp_event;
  // Guest, before registration: number of slots (power of two, ≤ [`MAX_RING_SIZE`]).
  uint32_t size;
  // Host: [`HOST_POLLING`], [`BROKEN`].
  uint32_t host_flags;
  // Zero.
  uint32_t reserved[10];
} PVKIT_RingHeader;

// The ABI version this crate describes.
#define PVKIT_ABI_VERSION (PVKIT_AbiVersion){ .major = PVKIT_ABI_VERSION_MAJOR, .minor = PVKIT_ABI_VERSION_MINOR }

#endif  /* PVKIT_ABI_H */

/*
 * PVKIT_ABI_NOTE(): emits the ABI version note (section .note.pvkit) the VMM requires.
 * Use once per guest image, at file scope. Keep the section in the linker script:
 *   .note.pvkit : { KEEP(*(.note.pvkit)) } :image :note
 */
#define PVKIT_ABI_NOTE()                                                              \
    __attribute__((used, section(".note.pvkit"), aligned(4)))                          \
    static const struct { uint32_t namesz, descsz, type; char name[8];                 \
                          uint32_t major, minor; } pvkit_abi_note = {                  \
        6, 8, PVKIT_TYPE_ABI_VERSION, "pvkit", PVKIT_ABI_VERSION_MAJOR,                \
        PVKIT_ABI_VERSION_MINOR }
