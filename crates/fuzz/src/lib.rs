//! # pvkit-fuzz — structure-aware libFuzzer harnesses for the pvkit trust boundary
//!
//! Every harness lives in this library as `<target>::run(data: &[u8])` so that the
//! `fuzz_targets/<target>.rs` binaries are one-liners and the seed corpus can be built,
//! round-tripped and replayed by ordinary `#[test]`s (`cargo +nightly test`).
//!
//! Inputs are decoded with [`arbitrary::Unstructured`]: a small setup structure, then a
//! sequence of operations until the input is exhausted (capped per target so one input
//! stays cheap). [`enc`] writes the same format, for the seeds.
//!
//! The harnesses are differential where the contract is precise enough: they carry an
//! independent model of what the code under test may change (guest RAM, disk) and compare
//! the whole state after every operation, not just "did not panic".

pub mod abi_decode;
pub mod ata;
#[cfg(feature = "vmm")]
pub mod elf_load;
pub mod enc;
#[cfg(feature = "vmm")]
pub mod hypercall_dispatch;
pub mod mem;
#[cfg(feature = "vmm")]
pub mod migration_stream;
pub mod ne2000;
pub mod pit;
pub mod pv_block;
pub mod pv_clock;
pub mod pv_console;
#[cfg(feature = "vmm")]
pub mod pv_ipi;
pub mod pv_net;
pub mod pv_ring;
#[cfg(feature = "vmm")]
pub mod snapshot_state;

/// A target: its name (the `fuzz_targets/` file and the `corpus/` directory), its harness
/// and its seeds.
pub type Target = (
    &'static str,
    fn(&[u8]),
    fn() -> Vec<(&'static str, Vec<u8>)>,
);

/// Every target built with the enabled features.
pub fn targets() -> Vec<Target> {
    #[allow(unused_mut)]
    let mut t: Vec<Target> = vec![
        ("abi_decode", abi_decode::run, abi_decode::seeds),
        ("ata", ata::run, ata::seeds),
        ("pit", pit::run, pit::seeds),
        ("ne2000", ne2000::run, ne2000::seeds),
        ("pv_block", pv_block::run, pv_block::seeds),
        ("pv_ring", pv_ring::run, pv_ring::seeds),
        ("pv_console", pv_console::run, pv_console::seeds),
        ("pv_clock", pv_clock::run, pv_clock::seeds),
        ("pv_net", pv_net::run, pv_net::seeds),
    ];
    #[cfg(feature = "vmm")]
    t.extend([
        (
            "elf_load",
            elf_load::run as fn(&[u8]),
            elf_load::seeds as fn() -> _,
        ),
        (
            "hypercall_dispatch",
            hypercall_dispatch::run,
            hypercall_dispatch::seeds,
        ),
        ("pv_ipi", pv_ipi::run, pv_ipi::seeds),
        (
            "migration_stream",
            migration_stream::run,
            migration_stream::seeds,
        ),
        ("snapshot_state", snapshot_state::run, snapshot_state::seeds),
    ]);
    t
}

/// The decoded form of an input of `target` (setup and operations), for reading crash
/// inputs: `PVKIT_FUZZ_TARGET=ata PVKIT_FUZZ_INPUT=artifacts/ata/crash-... \
/// cargo +nightly test describe_input -- --ignored --nocapture`.
pub fn describe(target: &str, data: &[u8]) -> Option<String> {
    use enc::decode_program as d;
    Some(match target {
        "abi_decode" => {
            let mut u = arbitrary::Unstructured::new(data);
            let mut ops = Vec::new();
            for_each_op(&mut u, abi_decode::MAX_OPS, |op: abi_decode::AbiOp| {
                ops.push(op)
            });
            format!("{ops:#?}")
        }
        "ata" => format!("{:#?}", d::<ata::AtaSetup, ata::AtaOp>(data, ata::MAX_OPS)),
        "pit" => format!("{:#?}", d::<pit::PitSetup, pit::PitOp>(data, pit::MAX_OPS)),
        "ne2000" => format!(
            "{:#?}",
            d::<ne2000::NeSetup, ne2000::NeOp>(data, ne2000::MAX_OPS)
        ),
        "pv_block" => format!(
            "{:#?}",
            d::<pv_block::BlockSetup, pv_block::BlockStep>(data, pv_block::MAX_OPS)
        ),
        "pv_ring" => format!(
            "{:#?}",
            d::<pv_ring::RingSetup, pv_ring::RingOp>(data, pv_ring::MAX_OPS)
        ),
        "pv_console" => format!(
            "{:#?}",
            d::<mem::RamSetup, pv_console::ConsoleOp>(data, pv_console::MAX_OPS)
        ),
        "pv_net" => format!("{:#?}", {
            let mut u = arbitrary::Unstructured::new(data);
            let mut ops = Vec::new();
            for_each_op(&mut u, pv_net::MAX_OPS, |op: pv_net::NetOp| ops.push(op));
            ops
        }),
        "pv_clock" => format!(
            "{:#?}",
            d::<mem::RamSetup, pv_clock::ClockOp>(data, pv_clock::MAX_OPS)
        ),
        #[cfg(feature = "vmm")]
        "elf_load" => {
            let mut u = arbitrary::Unstructured::new(data);
            let setup = <elf_load::ElfSetup as arbitrary::Arbitrary>::arbitrary(&mut u).ok()?;
            let mut patches = Vec::new();
            if setup != elf_load::ElfSetup::Raw {
                for_each_op(&mut u, elf_load::MAX_OPS, |p: elf_load::Patch| {
                    patches.push(p)
                });
            }
            format!("{setup:#?}\n{patches:#?}")
        }
        #[cfg(feature = "vmm")]
        "hypercall_dispatch" => format!(
            "{:#?}",
            d::<hypercall_dispatch::HcSetup, hypercall_dispatch::HcOp>(
                data,
                hypercall_dispatch::MAX_OPS
            )
        ),
        #[cfg(feature = "vmm")]
        "pv_ipi" => format!(
            "{:#?}",
            d::<pv_ipi::IpiSetup, pv_ipi::IpiOp>(data, pv_ipi::MAX_OPS)
        ),
        "migration_stream" => format!("{} bytes of stream", data.len()),
        _ => return None,
    })
}

/// Decodes `T` values from `u` until it is empty or `max` were produced, calling `f` on
/// each. Exhausted input decodes as zeros (arbitrary's rule), so the last operation may be
/// partly zero-filled; that is deterministic and fine.
pub fn for_each_op<'a, T, F>(u: &mut arbitrary::Unstructured<'a>, max: usize, mut f: F)
where
    T: arbitrary::Arbitrary<'a>,
    F: FnMut(T),
{
    let mut n = 0;
    while !u.is_empty() && n < max {
        match T::arbitrary(u) {
            Ok(op) => f(op),
            Err(_) => return,
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The committed seed corpus is exactly what `seeds()` produces.
    /// Regenerate with `cargo +nightly test -- --ignored write_seed_corpus`.
    #[test]
    fn committed_seeds_are_current() {
        for (target, _, seeds) in super::targets() {
            for (name, bytes) in seeds() {
                let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("corpus")
                    .join(target)
                    .join(format!("seed-{name}"));
                let on_disk = std::fs::read(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}; run write_seed_corpus", path.display()));
                assert!(
                    on_disk == bytes,
                    "{} is stale; run write_seed_corpus",
                    path.display()
                );
            }
        }
    }

    #[test]
    #[ignore = "reads PVKIT_FUZZ_TARGET and PVKIT_FUZZ_INPUT"]
    fn describe_input() {
        let target = std::env::var("PVKIT_FUZZ_TARGET").expect("PVKIT_FUZZ_TARGET");
        let input = std::env::var("PVKIT_FUZZ_INPUT").expect("PVKIT_FUZZ_INPUT");
        let data = std::fs::read(&input).expect("input file");
        println!("{}", super::describe(&target, &data).expect("known target"));
    }

    #[test]
    #[ignore = "writes the seed corpus into corpus/"]
    fn write_seed_corpus() {
        for (target, run, seeds) in super::targets() {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("corpus")
                .join(target);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, bytes) in seeds() {
                run(&bytes);
                std::fs::write(dir.join(format!("seed-{name}")), &bytes).unwrap();
            }
        }
    }
}
