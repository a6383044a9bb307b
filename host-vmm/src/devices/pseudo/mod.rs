//! Pseudo-devices: the benchmark markers ([`markers::BenchMarkers`], on the hypercall bus,
//! recording into [`bench::BenchRecorder`]) and the null port ([`null::NullPort`]).

pub mod bench;
pub mod markers;
pub mod null;
