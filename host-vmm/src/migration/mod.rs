//! Live migration: the versioned stream the source sends ([`stream`]), the pre-copy loop
//! over the dirty log ([`precopy`]), the source's driver ([`source`]) and the target's
//! receiver and hand-over ([`target`]).
//!
//! The source enables dirty tracking ([`crate::vstate::dirty`]), sends all of RAM while
//! the vCPUs run (round 1), then only what changed (rounds 2…), until the dirty set is
//! below a threshold or the round limit is hit; then the VM is paused, the last dirty pages
//! and the VM state follow, and the target resumes. Free-page hints
//! ([`crate::devices::pv::free_page_hint`]) keep pages the guest declared free out of the
//! stream until the guest writes them again. With a pre-shared key on both sides
//! ([`auth`]) the stream is authenticated: a challenge-response at connect and an HMAC on
//! every record (not encrypted).

pub mod auth;
pub mod precopy;
pub mod source;
pub mod stream;
pub mod target;

#[cfg(test)]
mod tests;
