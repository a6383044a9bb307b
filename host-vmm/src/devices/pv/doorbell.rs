//! The doorbell port [`DOORBELL`] ([`DoorbellPort`], on the port bus): one port for every
//! queue, the 32-bit value written names the queue ([`QueueId::to_u32`]); and its in-kernel
//! variant, KVM's ioeventfds with a datamatch on that value, one per queue
//! ([`IoEventRegistrar`], [`KvmIoEvents`]).

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use kvm_ioctls::{IoEventAddress, VmFd};
use pvkit_abi::ports::DOORBELL;
use pvkit_abi::ring::QueueId;
use vmm_sys_util::eventfd::EventFd;

#[cfg(doc)]
use pvkit_abi::ring::Transport;

use super::rings::RingSet;
use crate::bus::PortDevice;

/// Attaches ioeventfds to the doorbell port (KVM's `KVM_IOEVENTFD`; a fake in tests).
pub trait IoEventRegistrar: Send + Sync {
    /// Makes a 32-bit guest write of `value` to `port` signal `fd` in the kernel instead
    /// of exiting (datamatch: other values and widths still exit).
    fn register(&self, fd: &EventFd, port: u16, value: u32) -> io::Result<()>;
    /// Undoes [`IoEventRegistrar::register`].
    fn unregister(&self, fd: &EventFd, port: u16, value: u32) -> io::Result<()>;
}

/// KVM's ioeventfds on the VM.
#[derive(Debug, Clone)]
pub struct KvmIoEvents(pub Arc<VmFd>);

impl IoEventRegistrar for KvmIoEvents {
    fn register(&self, fd: &EventFd, port: u16, value: u32) -> io::Result<()> {
        self.0
            .register_ioevent(fd, &IoEventAddress::Pio(u64::from(port)), value)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }

    fn unregister(&self, fd: &EventFd, port: u16, value: u32) -> io::Result<()> {
        self.0
            .unregister_ioevent(fd, &IoEventAddress::Pio(u64::from(port)), value)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

/// The doorbell port on the bus: a 32-bit write of a queue's id services the queue when its
/// transport is [`Transport::Doorbell`], before the vCPU resumes. Writes for queues with
/// other transports (a guest that rings although the host polls) are ignored; writes of
/// other widths and values that name no queue of the VM are counted
/// ([`super::rings::Rings::unknown_doorbells`]) and ignored. Reads return all ones.
#[derive(Debug)]
pub struct DoorbellPort {
    pub(crate) rings: Arc<RingSet>,
}

/// The doorbell port and the number of ports it spans (one).
pub const DOORBELL_PORTS: (u16, u16) = (DOORBELL, 1);

impl PortDevice for DoorbellPort {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u16, data: &[u8]) {
        let queue = <[u8; 4]>::try_from(data)
            .ok()
            .and_then(|v| QueueId::from_u32(u32::from_le_bytes(v)).ok());
        match queue.and_then(|q| self.rings.index_of(q)) {
            Some(i) => self.rings.doorbell(i),
            None => {
                self.rings.unknown_doorbells.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
