//! The one poison-tolerant mutex lock of the VMM.
//!
//! Every mutex in the VMM guards plain state that stays consistent when a holder panics: a
//! device model's registers, a ring consumer's private indices (updated only after each
//! response is written), a disk backend whose every access is one positional read or write,
//! a console sink. A panic elsewhere (reported as a host failure, which stops the VM) must
//! not turn every later access into a second panic, so a poisoned lock is taken anyway.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, taking the guard even if a previous holder panicked.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_poisoned_lock_is_still_taken() {
        let m = Arc::new(Mutex::new(1));
        let m2 = Arc::clone(&m);
        let r = std::thread::spawn(move || {
            let mut g = m2.lock().unwrap();
            *g = 2;
            panic!("poison it");
        })
        .join();
        assert!(r.is_err());
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 3);
    }
}
