//! The host time-stamp counter, read by the vCPU's TSC-offset calibration
//! ([`crate::vstate::vcpu::Vcpu::guest_tsc_offset`]) and by the PV clock
//! ([`crate::devices::pv::clock::TscClock`]).

/// The host TSC.
pub fn host_tsc() -> u64 {
    // SAFETY: `rdtsc` reads the time-stamp counter into registers; it touches no memory.
    // Linux never sets CR4.TSD for user processes, so it cannot fault.
    #[allow(unused_unsafe)]
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_tsc_advances() {
        let a = host_tsc();
        std::thread::sleep(std::time::Duration::from_millis(1));
        let b = host_tsc();
        // 1 ms at any TSC rate above 1 MHz: far more than 1000 ticks.
        assert!(b.wrapping_sub(a) > 1000, "{a} then {b}");
    }
}
