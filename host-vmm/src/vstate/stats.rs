//! KVM's binary statistics of one vCPU (`KVM_GET_STATS_FD`, Linux 5.14+): the counters KVM
//! keeps in the kernel, among them `exits` (every exit from the guest, including those KVM
//! handles without returning to userspace), `irq_injections`, `halt_exits`. The exit ledger
//! reads them at every snapshot (`crate::exit::ledger::KernelCounters`), so a benchmark phase can report the
//! in-kernel exits per operation next to the userspace ones.
//!
//! The file's layout (`struct kvm_stats_header`, then `num_desc` descriptors of 16 bytes
//! plus `name_size` bytes of name, then the data) is parsed once by [`parse_layout`], a
//! plain function over bytes; every offset is checked against the bytes read. Only
//! cumulative one-value counters from [`WANTED`] are kept; each read is one `pread` per
//! counter.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;

use kvm_ioctls::VcpuFd;
use thiserror::Error;

/// The counters kept, where the kernel has them (names as KVM's x86 vCPU stats spell them).
pub const WANTED: [&str; 8] = [
    "exits",
    "io_exits",
    "mmio_exits",
    "halt_exits",
    "irq_exits",
    "irq_window_exits",
    "irq_injections",
    "insn_emulation",
];

/// Size of `struct kvm_stats_header`.
const HEADER: usize = 24;
/// Size of `struct kvm_stats_desc` before its name.
const DESC_FIXED: usize = 16;
/// Most descriptors and longest name accepted (x86 has ~50 names of 48 bytes).
const MAX_DESC: usize = 1024;
const MAX_NAME: usize = 256;
/// `KVM_STATS_TYPE_MASK` and the cumulative type.
const TYPE_MASK: u32 = 0xf;
const TYPE_CUMULATIVE: u32 = 0;

/// Errors opening or parsing the statistics.
#[derive(Debug, Error)]
pub enum StatsError {
    /// `KVM_GET_STATS_FD` failed (kernel before 5.14, or the platform does not offer it).
    #[error("KVM_GET_STATS_FD failed: {0}")]
    Open(std::io::Error),
    /// Reading the file failed.
    #[error("cannot read the KVM statistics: {0}")]
    Read(std::io::Error),
    /// The header or a descriptor is out of bounds or malformed.
    #[error("malformed KVM statistics layout: {0}")]
    Layout(&'static str),
}

/// Where one wanted counter's value is in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterAt {
    /// Its name (one of [`WANTED`]).
    pub name: &'static str,
    /// Byte offset of its `u64` value in the file.
    pub offset: u64,
}

/// From the header and the descriptor block: where each [`WANTED`] cumulative single-value
/// counter is, in [`WANTED`] order. `desc` must be the bytes at the header's `desc_offset`.
pub fn parse_layout(header: &[u8], desc: &[u8]) -> Result<Vec<CounterAt>, StatsError> {
    let short = StatsError::Layout("short header");
    let name_size = le32(header, 4).ok_or(short)? as usize;
    let num_desc = le32(header, 8).ok_or(StatsError::Layout("short header"))? as usize;
    let data_offset = le32(header, 20).ok_or(StatsError::Layout("short header"))?;
    if num_desc > MAX_DESC || name_size == 0 || name_size > MAX_NAME {
        return Err(StatsError::Layout(
            "descriptor count or name size out of range",
        ));
    }
    let stride = DESC_FIXED + name_size;
    if desc.len() < stride * num_desc {
        return Err(StatsError::Layout(
            "descriptor block shorter than announced",
        ));
    }
    let mut found = Vec::new();
    for d in desc.chunks_exact(stride).take(num_desc) {
        let bad = || StatsError::Layout("short descriptor");
        let flags = le32(d, 0).ok_or_else(bad)?;
        let size = d
            .get(6..8)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_le_bytes)
            .ok_or_else(bad)?;
        let offset = le32(d, 8).ok_or_else(bad)?;
        let raw = d.get(DESC_FIXED..).ok_or_else(bad)?;
        let name = raw.split(|&b| b == 0).next().unwrap_or(raw);
        let Some(&wanted) = WANTED.iter().find(|w| w.as_bytes() == name) else {
            continue;
        };
        if flags & TYPE_MASK != TYPE_CUMULATIVE || size != 1 {
            continue;
        }
        found.push(CounterAt {
            name: wanted,
            offset: u64::from(data_offset) + u64::from(offset),
        });
    }
    found.sort_by_key(|c| WANTED.iter().position(|w| *w == c.name));
    Ok(found)
}

/// The little-endian `u32` at `at` in `b`, if `b` holds it.
fn le32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at.checked_add(4)?)
        .and_then(|w| w.try_into().ok())
        .map(u32::from_le_bytes)
}

/// One vCPU's statistics file and where the wanted counters are in it.
#[derive(Debug)]
pub struct VcpuStats {
    file: File,
    counters: Vec<CounterAt>,
}

/// The ioctl number (kvm-ioctls does not wrap it).
#[allow(missing_docs)]
mod ioctls {
    vmm_sys_util::ioctl_io_nr!(KVM_GET_STATS_FD, kvm_bindings::KVMIO, 0xce);
}
use ioctls::KVM_GET_STATS_FD;

impl VcpuStats {
    /// Opens the statistics of `vcpu` (before its thread is confined: the ioctl is not in
    /// the seccomp list; the reads are `pread64`, which is).
    pub fn open(vcpu: &VcpuFd) -> Result<Self, StatsError> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new file descriptor (or
        // -1); it touches no memory of ours.
        let fd = unsafe { vmm_sys_util::ioctl::ioctl(vcpu, KVM_GET_STATS_FD()) };
        if fd < 0 {
            return Err(StatsError::Open(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut header = [0u8; HEADER];
        file.read_exact_at(&mut header, 0)
            .map_err(StatsError::Read)?;
        let layout = StatsError::Layout("short header");
        let name_size = le32(&header, 4).ok_or(layout)? as usize;
        let num_desc = le32(&header, 8).ok_or(StatsError::Layout("short header"))? as usize;
        let desc_offset = le32(&header, 16).ok_or(StatsError::Layout("short header"))?;
        if num_desc > MAX_DESC || name_size > MAX_NAME {
            return Err(StatsError::Layout(
                "descriptor count or name size out of range",
            ));
        }
        let mut desc = vec![0u8; (DESC_FIXED + name_size) * num_desc];
        file.read_exact_at(&mut desc, desc_offset.into())
            .map_err(StatsError::Read)?;
        let counters = parse_layout(&header, &desc)?;
        Ok(Self { file, counters })
    }

    /// The counters found.
    pub fn counters(&self) -> &[CounterAt] {
        &self.counters
    }
}

impl VcpuStats {
    /// Every exit of the vCPU from guest mode so far (the `exits` counter), handled in the
    /// kernel or not; `None` when the kernel has no such counter or the read fails.
    pub fn exits(&self) -> Option<u64> {
        let c = self.counters.iter().find(|c| c.name == "exits")?;
        let mut v = [0u8; 8];
        self.file.read_exact_at(&mut v, c.offset).ok()?;
        Some(u64::from_le_bytes(v))
    }

    /// The current values of the counters found, by name (a counter whose read fails is
    /// left out).
    pub fn read(&self) -> Vec<(&'static str, u64)> {
        self.counters
            .iter()
            .filter_map(|c| {
                let mut v = [0u8; 8];
                self.file.read_exact_at(&mut v, c.offset).ok()?;
                Some((c.name, u64::from_le_bytes(v)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layout as the kernel writes it: `names` with (flags, size) at data offsets 8·i.
    fn layout(name_size: usize, descs: &[(&str, u32, u16)]) -> (Vec<u8>, Vec<u8>) {
        let data_offset = 4096u32;
        let mut h = vec![0u8; HEADER];
        h[4..8].copy_from_slice(&(name_size as u32).to_le_bytes());
        h[8..12].copy_from_slice(&(descs.len() as u32).to_le_bytes());
        h[16..20].copy_from_slice(&(HEADER as u32).to_le_bytes());
        h[20..24].copy_from_slice(&data_offset.to_le_bytes());
        let mut d = Vec::new();
        for (i, (name, flags, size)) in descs.iter().enumerate() {
            let mut e = vec![0u8; DESC_FIXED + name_size];
            e[0..4].copy_from_slice(&flags.to_le_bytes());
            e[6..8].copy_from_slice(&size.to_le_bytes());
            e[8..12].copy_from_slice(&(8 * i as u32).to_le_bytes());
            e[DESC_FIXED..DESC_FIXED + name.len()].copy_from_slice(name.as_bytes());
            d.extend(e);
        }
        (h, d)
    }

    #[test]
    fn finds_the_wanted_cumulative_counters_in_wanted_order() {
        let (h, d) = layout(
            48,
            &[
                ("halt_exits", 0, 1),
                ("blocking", 0x41, 1),
                ("exits", 0, 1),
                ("halt_wait_hist", 0x24, 32),
                ("irq_injections", 0, 1),
            ],
        );
        let c = parse_layout(&h, &d).unwrap();
        let names: Vec<_> = c.iter().map(|c| c.name).collect();
        assert_eq!(names, ["exits", "halt_exits", "irq_injections"]);
        assert_eq!(c[0].offset, 4096 + 16);
        assert_eq!(c[1].offset, 4096);
    }

    #[test]
    fn refuses_layouts_out_of_bounds() {
        let (h, d) = layout(48, &[("exits", 0, 1), ("io_exits", 0, 1)]);
        assert!(parse_layout(&h[..10], &d).is_err());
        assert!(parse_layout(&h, &d[..d.len() - 1]).is_err());
        let mut big = h.clone();
        big[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_layout(&big, &d).is_err());
        let mut no_name = h;
        no_name[4..8].copy_from_slice(&0u32.to_le_bytes());
        assert!(parse_layout(&no_name, &d).is_err());
    }
}
