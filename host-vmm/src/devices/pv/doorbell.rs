//! The doorbell ports `0x510 + ring id` ([`DoorbellPorts`], on the port bus) and their
//! in-kernel variant, KVM's ioeventfds ([`IoEventRegistrar`], [`KvmIoEvents`]).

use std::io;
use std::sync::Arc;

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use pvkit_abi::ports::{DOORBELL_BASE, DOORBELL_END};
use pvkit_abi::ring::RingId;
use vmm_sys_util::eventfd::EventFd;

#[cfg(doc)]
use pvkit_abi::ring::Transport;

use super::rings::RingSet;
use crate::bus::PortDevice;

/// Attaches ioeventfds to doorbell ports (KVM's `KVM_IOEVENTFD`; a fake in tests).
pub trait IoEventRegistrar: Send + Sync {
    /// Makes any guest write to `port` signal `fd` in the kernel instead of exiting.
    fn register(&self, fd: &EventFd, port: u16) -> io::Result<()>;
    /// Undoes [`IoEventRegistrar::register`].
    fn unregister(&self, fd: &EventFd, port: u16) -> io::Result<()>;
}

/// KVM's ioeventfds on the VM.
#[derive(Debug, Clone)]
pub struct KvmIoEvents(pub Arc<VmFd>);

impl IoEventRegistrar for KvmIoEvents {
    fn register(&self, fd: &EventFd, port: u16) -> io::Result<()> {
        self.0
            .register_ioevent(fd, &IoEventAddress::Pio(u64::from(port)), NoDatamatch)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }

    fn unregister(&self, fd: &EventFd, port: u16) -> io::Result<()> {
        self.0
            .unregister_ioevent(fd, &IoEventAddress::Pio(u64::from(port)), NoDatamatch)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

/// The doorbell ports on the bus: a write services the ring when its transport is
/// [`Transport::Doorbell`], before the vCPU resumes. Writes for rings with other
/// transports (a guest that rings although the host polls) and for unknown rings are
/// counted by the ledger and otherwise ignored.
#[derive(Debug)]
pub struct DoorbellPorts {
    pub(crate) rings: Arc<RingSet>,
}

/// First doorbell port and the number of doorbell ports.
pub const DOORBELL_PORTS: (u16, u16) = (DOORBELL_BASE, DOORBELL_END - DOORBELL_BASE);

impl PortDevice for DoorbellPorts {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, offset: u16, _data: &[u8]) {
        let Ok(ring) = RingId::try_from(u32::from(offset)) else {
            return;
        };
        if let Some(i) = self.rings.index_of(ring) {
            self.rings.doorbell(i);
        }
    }
}
