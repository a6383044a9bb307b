//! # pvkit command line
//!
//! Everything of the `pvkit` binary that is not the VMM: the `pvkit bench` runner
//! ([`bench_runner`]: one VM per device, cases, expected exits, the progress bar, the
//! results files through `pvkit-report`) and the `pvkit run --stats` report
//! ([`stats_report`]), `pvkit new`, the guest crate scaffold ([`new_guest`]), `pvkit fleet`,
//! many guests on one host cooperating over a bridge ([`fleet`]), and the VM lifecycle
//! measured and checked for `pvkit bench --only snapshot,migrate` ([`lifecycle`]). The VMM itself is the library `pvkit_vmm` (`host-vmm/`), which
//! depends on none of clap, indicatif, plotters or the report crate.
#![deny(missing_docs)]

pub mod bench_runner;
pub mod fleet;
pub mod lifecycle;
pub mod new_guest;
pub mod stats_report;
