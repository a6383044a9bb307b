//! The PV block device: `BlockCapacity`, `BlockIo` and the block ring, over the VM's disk
//! ([`crate::io::disk::SharedDisk`]). The request handling is the backend's
//! ([`pvkit_pv::BlockDevice`]); this file only wires it to the bus.
//!
//! Lock order: the ring's slot (held while the ring is serviced), then the device.

use std::sync::{Arc, Mutex};

use pvkit_abi::call::{CallReturn, Hypercall};
use pvkit_abi::cpuid::Features;
use pvkit_abi::ring::{QueueId, BLOCK_QUEUE};
use pvkit_abi::Status;
use pvkit_pv::{BlockDevice, BlockRing};

use super::rings::{Queue, RingQueue};
use super::{CallCtx, PvDevice, QueueSpec};
use crate::io::disk::SharedDisk;
use crate::runtime::sync::lock;
use crate::vstate::memory::GuestRam;

/// Ledger name of the block ring's in-kernel notifications (ioeventfd signals).
pub const NOTIFY_BLOCK_RING: &str = "block ring";

const QUEUES: &[QueueSpec] = &[QueueSpec {
    queue: BLOCK_QUEUE,
    feature: Features::BLOCK_RING,
    notifier: NOTIFY_BLOCK_RING,
}];

/// The PV block device over one disk.
#[derive(Debug)]
pub struct PvBlock {
    dev: Arc<Mutex<BlockDevice<SharedDisk>>>,
}

impl PvBlock {
    /// The block device of `disk`.
    pub fn new(disk: SharedDisk) -> Self {
        Self {
            dev: Arc::new(Mutex::new(BlockDevice::new(disk))),
        }
    }
}

impl PvDevice for PvBlock {
    fn name(&self) -> &'static str {
        "block"
    }

    fn features(&self) -> Features {
        Features::BLOCK
    }

    fn hypercalls(&self) -> &'static [Hypercall] {
        &[Hypercall::BlockCapacity, Hypercall::BlockIo]
    }

    fn queues(&self) -> &'static [QueueSpec] {
        QUEUES
    }

    fn call(&self, ctx: &CallCtx<'_>, call: Hypercall, args: [u64; 4]) -> CallReturn {
        let [addr, ..] = args;
        match call {
            Hypercall::BlockCapacity => CallReturn::ok(ctx.vcpu_lock(&self.dev).capacity_sectors()),
            Hypercall::BlockIo => {
                // A ring service on the I/O thread may hold the device: one budget at most.
                let (status, bytes) = ctx.vcpu_lock(&self.dev).handle_gpa(ctx.mem, addr);
                CallReturn {
                    status,
                    value: if status == Status::Ok { bytes } else { 0 },
                }
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
        if queue != BLOCK_QUEUE {
            return Err(Status::EOPNOTSUPP);
        }
        let consumer = BlockRing::new(mem, addr, len).map_err(|e| e.status())?;
        let dev = Arc::clone(&self.dev);
        Ok(Box::new(RingQueue::new(consumer, move |mem, ring| {
            lock(&dev).service_ring(mem, ring)
        })))
    }
}
