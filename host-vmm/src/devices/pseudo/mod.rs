//! Pseudo-devices: the benchmark markers ([`markers::BenchMarkers`], on the hypercall bus,
//! recording into [`bench::BenchRecorder`]), the null port ([`null::NullPort`]) and the
//! interrupt test port ([`irq_test::IrqTestPort`]).

pub mod bench;
pub mod irq_test;
pub mod markers;
pub mod null;
