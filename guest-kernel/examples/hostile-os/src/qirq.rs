//! `case=qirq`: `QueueInterrupt` (0x007) with every argument the ABI rejects, run twice by
//! the tests: with `--net loopback --nic pv` (the in-kernel irqchip: `RING_IRQ` offered,
//! the PV net queues declared) and with no NIC (no irqchip: no interrupts at all).
//!
//! With `RING_IRQ`: queue ids that are not queue ids (above 32 bits, the page bit, an
//! unknown device class) are `EINVAL`; well-formed ids of queues the VM does not have are
//! `EOPNOTSUPP`; flags other than 0 and GSIs outside 16–23 (an ISA pin, 24, 32-bit
//! truncations, `u64::MAX`) are `EINVAL`; declared but unregistered queues bind, two queues
//! may share a GSI (lines are shared, not taken), and a storm of 512 binds and unbinds
//! across every GSI all succeed and leave the VMM answering. Without it: every call is
//! `EOPNOTSUPP`, whatever its arguments.

use pvkit_abi::cpuid::Features;
use pvkit_abi::ring::{
    BLOCK_QUEUE_ID, CONSOLE_QUEUE_ID, NET_RX_QUEUE_ID, NET_TX_QUEUE_ID, RING_IRQ_GSIS,
    RING_IRQ_GSI_FIRST,
};
use pvkit_abi::{Hypercall, Status};

use crate::raw::call;
use crate::Ctx;

/// Bind/unbind pairs of the storm.
const STORM: u64 = 256;

fn qi(queue: u64, gsi: u64, flags: u64) -> i64 {
    // SAFETY: QueueInterrupt touches no guest memory.
    unsafe { call(Hypercall::QueueInterrupt as u32, [queue, gsi, flags, 0]) }.rax
}

/// Runs the scenario.
pub fn run(ctx: &mut Ctx) {
    let irq = ctx.features.contains(Features::RING_IRQ);
    let c = &mut ctx.checks;
    let first = u64::from(RING_IRQ_GSI_FIRST);
    let last = first + u64::from(RING_IRQ_GSIS) - 1;
    let rx = u64::from(NET_RX_QUEUE_ID);
    let tx = u64::from(NET_TX_QUEUE_ID);
    if !irq {
        // No irqchip: nothing can be bound, and nothing else is looked at first.
        c.status("qirq.nochip.rx", qi(rx, first, 0), Status::EOPNOTSUPP);
        c.status(
            "qirq.nochip.console",
            qi(u64::from(CONSOLE_QUEUE_ID), first, 0),
            Status::EOPNOTSUPP,
        );
        c.status(
            "qirq.nochip.unbind",
            qi(u64::from(CONSOLE_QUEUE_ID), 0, 0),
            Status::EOPNOTSUPP,
        );
        c.status("qirq.nochip.bad-gsi", qi(rx, 9, 0), Status::EOPNOTSUPP);
        c.status(
            "qirq.nochip.bad-queue",
            qi(1 << 40, first, 0),
            Status::EOPNOTSUPP,
        );
        c.status("qirq.nochip.flags", qi(rx, first, 1), Status::EOPNOTSUPP);
        return;
    }
    // Not queue ids.
    c.status(
        "qirq.queue.above-32-bits",
        qi((1 << 32) | rx, first, 0),
        Status::EINVAL,
    );
    c.status("qirq.queue.max", qi(u64::MAX, first, 0), Status::EINVAL);
    c.status(
        "qirq.queue.page-bit",
        qi(0x3_8000, first, 0),
        Status::EINVAL,
    );
    c.status(
        "qirq.queue.no-class",
        qi(0x7_0000, first, 0),
        Status::EINVAL,
    );
    // Queue ids of queues this VM does not have.
    c.status(
        "qirq.queue.net-5",
        qi(0x3_0005, first, 0),
        Status::EOPNOTSUPP,
    );
    c.status(
        "qirq.queue.memory",
        qi(0x5_0000, first, 0),
        Status::EOPNOTSUPP,
    );
    c.status(
        "qirq.queue.core",
        qi(0x0_0000, first, 0),
        Status::EOPNOTSUPP,
    );
    c.status(
        "qirq.queue.bench",
        qi(0xf_0000, first, 0),
        Status::EOPNOTSUPP,
    );
    // Flags.
    c.status("qirq.flags.1", qi(rx, first, 1), Status::EINVAL);
    c.status("qirq.flags.top", qi(rx, first, 1 << 63), Status::EINVAL);
    c.status("qirq.flags.unbind", qi(rx, 0, 2), Status::EINVAL);
    // GSIs outside the range: the ISA pins (the NE2000's 9), the end, truncations.
    for (name, gsi) in [
        ("qirq.gsi.1", 1),
        ("qirq.gsi.9", 9),
        ("qirq.gsi.below", first - 1),
        ("qirq.gsi.above", last + 1),
        ("qirq.gsi.255", 255),
        ("qirq.gsi.trunc", (1 << 32) | first),
        ("qirq.gsi.max", u64::MAX),
    ] {
        c.status(name, qi(rx, gsi, 0), Status::EINVAL);
    }
    // Declared queues this guest never registered bind; lines are shared.
    c.status("qirq.bind.rx", qi(rx, first, 0), Status::Ok);
    c.status("qirq.bind.tx-same-gsi", qi(tx, first, 0), Status::Ok);
    c.status(
        "qirq.bind.console",
        qi(u64::from(CONSOLE_QUEUE_ID), last, 0),
        Status::Ok,
    );
    // The tests always give a disk: the PV block queue is declared.
    c.status(
        "qirq.bind.block",
        qi(u64::from(BLOCK_QUEUE_ID), last, 0),
        Status::Ok,
    );
    c.status("qirq.rebind.rx", qi(rx, first + 1, 0), Status::Ok);
    c.status("qirq.unbind.unbound", qi(rx, 0, 0), Status::Ok);
    c.status("qirq.unbind.again", qi(rx, 0, 0), Status::Ok);
    // The storm: every GSI in turn, bound and unbound, on both queues.
    let mut ok = 0u64;
    for i in 0..STORM {
        let q = if i % 2 == 0 { rx } else { tx };
        let gsi = first + i % u64::from(RING_IRQ_GSIS);
        ok += u64::from(qi(q, gsi, 0) == Status::Ok as i64);
        ok += u64::from(qi(q, 0, 0) == Status::Ok as i64);
    }
    c.value("qirq.storm.ok", ok, 2 * STORM);
    for (name, q) in [
        ("qirq.end.tx", tx),
        ("qirq.end.console", u64::from(CONSOLE_QUEUE_ID)),
        ("qirq.end.block", u64::from(BLOCK_QUEUE_ID)),
    ] {
        c.status(name, qi(q, 0, 0), Status::Ok);
    }
    // The VMM still answers.
    // SAFETY: AbiVersion touches no guest memory.
    let v = unsafe { call(Hypercall::AbiVersion as u32, [0; 4]) };
    c.status("qirq.after.abi-version", v.rax, Status::Ok);
}
