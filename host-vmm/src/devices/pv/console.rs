//! The PV console device: `ConsoleWrite` and the console ring, one path and one rule for
//! both ([`pvkit_pv::console::write`], the backend), writing to the VM's console sink.

use pvkit_abi::call::{CallReturn, Hypercall};
use pvkit_abi::cpuid::Features;
use pvkit_abi::ring::{QueueId, CONSOLE_QUEUE};
use pvkit_abi::Status;
use pvkit_pv::{console, ConsoleRing};

use super::rings::{Queue, RingQueue};
use super::{CallCtx, PvDevice, QueueSpec};
use crate::hypercall::call_return;
use crate::io::console_out::Console;
use crate::vstate::memory::GuestRam;

/// Ledger name of the console ring's in-kernel notifications (ioeventfd signals).
pub const NOTIFY_CONSOLE_RING: &str = "console ring";

const QUEUES: &[QueueSpec] = &[QueueSpec {
    queue: CONSOLE_QUEUE,
    feature: Features::CONSOLE_RING,
    notifier: NOTIFY_CONSOLE_RING,
}];

/// The PV console, writing to a [`Console`] sink (shared with the UART).
#[derive(Debug, Clone)]
pub struct PvConsole {
    sink: Console,
}

impl PvConsole {
    /// A console writing to `sink`.
    pub fn new(sink: Console) -> Self {
        Self { sink }
    }
}

impl PvDevice for PvConsole {
    fn name(&self) -> &'static str {
        "console"
    }

    fn features(&self) -> Features {
        Features::CONSOLE
    }

    fn hypercalls(&self) -> &'static [Hypercall] {
        &[Hypercall::ConsoleWrite]
    }

    fn queues(&self) -> &'static [QueueSpec] {
        QUEUES
    }

    fn call(&self, ctx: &CallCtx<'_>, call: Hypercall, args: [u64; 4]) -> CallReturn {
        let [addr, len, _, _] = args;
        match call {
            Hypercall::ConsoleWrite => {
                let mut sink = self.sink.clone();
                call_return(console::write(ctx.mem, addr, len, &mut sink).map(|n| n as u64))
            }
            _ => CallReturn::err(Status::EOPNOTSUPP),
        }
    }

    fn open_queue(
        &self,
        mem: &GuestRam,
        queue: QueueId,
        addr: u64,
        len: u64,
    ) -> Result<Box<dyn Queue>, Status> {
        if queue != CONSOLE_QUEUE {
            return Err(Status::EOPNOTSUPP);
        }
        let consumer = ConsoleRing::new(mem, addr, len).map_err(|e| e.status())?;
        let mut sink = self.sink.clone();
        Ok(Box::new(RingQueue::new(consumer, move |mem, ring| {
            console::service_ring(mem, ring, &mut sink)
        })))
    }
}
