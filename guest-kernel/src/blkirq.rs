//! `blkirq=N`: PV block completions by interrupt. Registers the block ring (transport
//! `blkirq_transport=doorbell|eventfd`, default `doorbell`), binds it to GSI
//! [`BLOCK_GSI`] (`QueueInterrupt`, feature `RING_IRQ`) routed through the IOAPIC, then
//! runs `N` batches of [`BATCH`] 4 KiB reads of sectors `0..` and, for each batch, halts
//! until the completion interrupt and takes the responses. `rsp_event` is armed before each
//! batch is submitted (it starts armed at registration, then is re-armed after each
//! drain), so every batch raises exactly one interrupt, which the guest waits for.
//! Prints `blkirq: done batches=N requests=R irqs=K errors=E`.

use crate::statics::{Exclusive, Pages};
use pvkit_abi::block::BlockOp;
use pvkit_abi::boot::BootInfo;
use pvkit_abi::cpuid::Features;
use pvkit_abi::ring::Transport;
use pvkit_guest::addr::virt_to_phys;
use pvkit_guest::block::BlockRing;

/// The GSI (IOAPIC pin) the block ring is bound to.
pub const BLOCK_GSI: u8 = 17;
/// Requests per batch.
pub const BATCH: u32 = 4;
/// Bytes per request.
const LEN: usize = 4096;

static RING: Exclusive<Pages<4096>> = Exclusive::new(Pages::zeroed());
static BUFS: Exclusive<Pages<{ BATCH as usize * LEN }>> = Exclusive::new(Pages::zeroed());

/// Runs `batches` batches and ends the VM.
pub fn run(batches: u64, eventfd: bool, _boot: &BootInfo) -> ! {
    let need = Features::BLOCK_RING | Features::RING_IRQ;
    if !pvkit_guest::hypercall::features().contains(need) {
        panic!("blkirq: the host offers no block ring with interrupts (BLOCK_RING, RING_IRQ)");
    }
    let transport = match eventfd {
        true => Transport::DoorbellEventfd,
        false => Transport::Doorbell,
    };
    let mut ring = match BlockRing::register(&mut RING.take().0, 8, transport) {
        Ok(r) => r,
        Err(e) => panic!("blkirq: block ring refused: {e:?}"),
    };
    crate::net::route_interrupt(BLOCK_GSI);
    if let Err(e) = ring.bind_interrupt(u32::from(BLOCK_GSI)) {
        panic!("blkirq: QueueInterrupt refused: {e:?}");
    }
    let bufs = BUFS.take().0.as_mut_ptr();
    let irqs0 = crate::net::interrupts_handled();
    let (mut requests, mut errors) = (0u64, 0u64);
    for b in 0..batches {
        for i in 0..BATCH {
            let sector = (b * u64::from(BATCH) + u64::from(i)) * 8 % 2048;
            // SAFETY: buffer `i` of BUFS (taken for ever) is only written by the host until
            // this batch's responses are taken below.
            let gpa = virt_to_phys(unsafe { bufs.add(i as usize * LEN) });
            // SAFETY: as above.
            if unsafe { ring.queue(u64::from(i), BlockOp::Read, sector, gpa, LEN as u32) }.is_err()
            {
                errors += 1;
            }
        }
        ring.submit();
        let mut done = 0;
        while done < BATCH {
            crate::net::wait_for_interrupt();
            loop {
                done += ring.poll(|r| {
                    if r.bytes != LEN as u64 {
                        errors += 1;
                    }
                });
                // Re-armed for the next batch (or for the rest of this one).
                if !ring.arm() {
                    break;
                }
            }
        }
        requests += u64::from(done);
    }
    let irqs = crate::net::interrupts_handled() - irqs0;
    let _ = ring.bind_interrupt(0);
    println!("blkirq: done batches={batches} requests={requests} irqs={irqs} errors={errors}");
    crate::exit(0)
}
