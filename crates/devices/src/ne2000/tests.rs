use super::*;
use proptest::prelude::*;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

fn out8(nic: &mut Ne2000, off: u16, v: u8) {
    nic.write(off, &[v]);
}

fn in8(nic: &mut Ne2000, off: u16) -> u8 {
    let mut b = [0];
    nic.read(off, &mut b);
    b[0]
}

/// Linux's `NS8390_init` with ring `0x46..0x80` and the station address programmed,
/// started, broadcast accepted, all interrupts unmasked.
fn started() -> Ne2000 {
    let mut nic = Ne2000::new(MAC);
    for (r, v) in [
        (CR, 0x21),
        (DCR, 0x49),
        (RBCR0, 0),
        (RBCR1, 0),
        (RCR, 0x20),
        (TCR, 0x02),
        (TPSR, 0x40),
        (PSTART, 0x46),
        (BNRY, 0x46),
        (PSTOP, 0x80),
        (ISR, 0xFF),
        (IMR, 0x7F),
        (CR, 0x61),
    ] {
        out8(&mut nic, r, v);
    }
    for (i, b) in MAC.iter().enumerate() {
        out8(&mut nic, PAR0 + i as u16, *b);
    }
    out8(&mut nic, CURR, 0x47);
    out8(&mut nic, CR, 0x22);
    out8(&mut nic, TCR, 0);
    out8(&mut nic, RCR, 0x04);
    nic
}

/// Remote read of `len` bytes at `addr` through the data port (word mode if `DCR.WTS`).
fn dma_read(nic: &mut Ne2000, addr: u16, len: u16) -> Vec<u8> {
    out8(nic, RBCR0, len as u8);
    out8(nic, RBCR1, (len >> 8) as u8);
    out8(nic, RSAR0, addr as u8);
    out8(nic, RSAR1, (addr >> 8) as u8);
    out8(nic, CR, 0x0A);
    let mut buf = vec![0; usize::from(len)];
    nic.read(DATA, &mut buf);
    buf
}

fn dma_write(nic: &mut Ne2000, addr: u16, data: &[u8]) {
    let len = data.len() as u16;
    out8(nic, RBCR0, len as u8);
    out8(nic, RBCR1, (len >> 8) as u8);
    out8(nic, RSAR0, addr as u8);
    out8(nic, RSAR1, (addr >> 8) as u8);
    out8(nic, CR, 0x12);
    nic.write(DATA, data);
}

fn frame(dst: [u8; 6], len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect();
    f[..6].copy_from_slice(&dst);
    f
}

/// Reads CURR through page 1.
fn curr(nic: &mut Ne2000) -> u8 {
    out8(nic, CR, 0x62);
    let c = in8(nic, CURR);
    out8(nic, CR, 0x22);
    c
}

#[test]
fn reset_port_stops_the_chip_and_keeps_memory() {
    let mut nic = started();
    dma_write(&mut nic, 0x5000, &[1, 2, 3, 4]);
    assert_eq!(in8(&mut nic, CR), 0x12, "started, remote write command");
    let v = in8(&mut nic, RESET);
    out8(&mut nic, RESET, v);
    assert_eq!(in8(&mut nic, CR), 0x21);
    assert_eq!(in8(&mut nic, ISR), isr::RST);
    assert!(!nic.irq_level(), "IMR cleared by reset, RST not maskable");
    // RST is status only.
    out8(&mut nic, ISR, 0xFF);
    assert_eq!(in8(&mut nic, ISR), isr::RST);
    out8(&mut nic, CR, 0x22);
    assert_eq!(in8(&mut nic, ISR), 0, "start clears RST");
    out8(&mut nic, DCR, 0x49);
    assert_eq!(dma_read(&mut nic, 0x5000, 4), [1, 2, 3, 4]);
}

#[test]
fn prom_holds_the_doubled_mac_and_signature_in_byte_and_word_mode() {
    let mut want = vec![];
    for b in MAC {
        want.extend([b, b]);
    }
    want.extend([0; 16]);
    want.extend([0x57; 4]);
    for dcr in [0x48, 0x49] {
        let mut nic = Ne2000::new(MAC);
        out8(&mut nic, DCR, dcr);
        assert_eq!(dma_read(&mut nic, 0, 32), want, "DCR {dcr:#x}");
        assert_ne!(in8(&mut nic, ISR) & isr::RDC, 0);
    }
    // Outside the PROM and RAM: 0xFF; writes there are dropped.
    let mut nic = started();
    dma_write(&mut nic, 0x0000, &[0; 4]);
    dma_write(&mut nic, 0x8000, &[0; 4]);
    assert_eq!(dma_read(&mut nic, 0x0000, 2), [MAC[0], MAC[0]]);
    assert_eq!(dma_read(&mut nic, 0x2000, 2), [0xFF, 0xFF]);
    assert_eq!(dma_read(&mut nic, 0x8000, 2), [0xFF, 0xFF]);
}

#[test]
fn remote_dma_byte_and_word_mode() {
    let mut nic = started();
    let data: Vec<u8> = (0..101u8).collect();
    // Byte mode write, one access per byte.
    out8(&mut nic, DCR, 0x48);
    out8(&mut nic, ISR, 0xFF);
    out8(&mut nic, RBCR0, 101);
    out8(&mut nic, RBCR1, 0);
    out8(&mut nic, RSAR0, 0x10);
    out8(&mut nic, RSAR1, 0x41);
    out8(&mut nic, CR, 0x12);
    for (i, b) in data.iter().enumerate() {
        assert_eq!(in8(&mut nic, ISR) & isr::RDC, 0, "RDC early at {i}");
        nic.write(DATA, &[*b]);
    }
    assert_ne!(in8(&mut nic, ISR) & isr::RDC, 0, "RDC when RBCR reaches 0");
    assert_eq!(in8(&mut nic, RSAR0), 0x10 + 101);
    // Past the count: writes dropped, reads float.
    nic.write(DATA, &[0xEE]);
    assert_eq!(in8(&mut nic, DATA), 0xFF);
    // Word mode read as ne.c does an odd count: words, then one inb.
    out8(&mut nic, DCR, 0x49);
    out8(&mut nic, RBCR0, 101);
    out8(&mut nic, RBCR1, 0);
    out8(&mut nic, RSAR0, 0x10);
    out8(&mut nic, RSAR1, 0x41);
    out8(&mut nic, CR, 0x0A);
    let mut got = vec![0; 100];
    nic.read(DATA, &mut got); // one rep insw of 50 words
    got.push(in8(&mut nic, DATA));
    assert_eq!(got, data);
    assert_eq!(in8(&mut nic, RSAR0), 0x10 + 101);
    // Word mode: a 1-byte write is a word with high byte 0.
    dma_write(&mut nic, 0x4200, &[0xAB]);
    out8(&mut nic, DCR, 0x48);
    assert_eq!(dma_read(&mut nic, 0x4200, 1), [0xAB]);
}

#[test]
fn zero_count_dma_completes_at_once_and_abort_stops_it() {
    let mut nic = started();
    out8(&mut nic, ISR, 0xFF);
    out8(&mut nic, RBCR0, 0);
    out8(&mut nic, RBCR1, 0);
    out8(&mut nic, CR, 0x0A);
    assert_eq!(in8(&mut nic, ISR), isr::RDC);
    assert_eq!(in8(&mut nic, DATA), 0xFF);
    dma_write(&mut nic, 0x4000, &[9; 8]);
    out8(&mut nic, RBCR0, 8);
    out8(&mut nic, RSAR0, 0);
    out8(&mut nic, RSAR1, 0x40);
    out8(&mut nic, CR, 0x0A);
    out8(&mut nic, CR, 0x22); // abort
    assert_eq!(in8(&mut nic, DATA), 0xFF);
}

#[test]
fn remote_dma_wraps_from_pstop_to_pstart() {
    let mut nic = started();
    let data: Vec<u8> = (0..32).collect();
    dma_write(&mut nic, 0x7FF0, &data);
    assert_eq!(dma_read(&mut nic, 0x7FF0, 16), &data[..16]);
    assert_eq!(dma_read(&mut nic, 0x4600, 16), &data[16..]);
    assert_eq!(dma_read(&mut nic, 0x7FF0, 32), data);
}

#[test]
fn transmit_sends_the_frame_byte_exact() {
    let mut nic = started();
    for len in [1514usize, 61, 60, 14, 0] {
        let f = frame([0xFF; 6], len.max(6), len as u8);
        let f = &f[..len];
        dma_write(&mut nic, 0x4000, f);
        out8(&mut nic, ISR, 0xFF);
        out8(&mut nic, TPSR, 0x40);
        out8(&mut nic, TBCR0, len as u8);
        out8(&mut nic, TBCR1, (len >> 8) as u8);
        out8(&mut nic, CR, 0x26);
        assert_eq!(in8(&mut nic, CR), 0x22, "TXP reads 0 once sent");
        assert_eq!(in8(&mut nic, TSR), tsr::PTX);
        assert_eq!(in8(&mut nic, ISR), isr::PTX);
        assert!(nic.irq_level());
        let mut want = f.to_vec();
        want.resize(len.max(60), 0);
        assert_eq!(nic.take_tx(), Some(want), "len {len}");
        assert_eq!(nic.take_tx(), None);
    }
    assert_eq!(nic.stats().tx_frames, 5);
}

#[test]
fn oversize_transmit_is_refused_and_stopped_or_loopback_sends_nothing() {
    let mut nic = started();
    out8(&mut nic, ISR, 0xFF);
    out8(&mut nic, TBCR0, 0xEB); // 1515
    out8(&mut nic, TBCR1, 0x05);
    out8(&mut nic, CR, 0x26);
    assert_eq!(in8(&mut nic, TSR), tsr::ABT);
    assert_eq!(in8(&mut nic, ISR), isr::TXE);
    assert_eq!(nic.take_tx(), None);
    assert_eq!(nic.stats().tx_refused, 1);
    // 0xFFFF too.
    out8(&mut nic, TBCR0, 0xFF);
    out8(&mut nic, TBCR1, 0xFF);
    out8(&mut nic, CR, 0x26);
    assert_eq!(nic.stats().tx_refused, 2);
    // Loopback: completes, not sent.
    out8(&mut nic, TBCR0, 60);
    out8(&mut nic, TBCR1, 0);
    out8(&mut nic, TCR, 0x02);
    out8(&mut nic, CR, 0x26);
    assert_eq!(in8(&mut nic, TSR), tsr::PTX);
    assert_eq!((nic.take_tx(), nic.stats().tx_loopback), (None, 1));
    // Stopped: TXP ignored.
    out8(&mut nic, TCR, 0);
    out8(&mut nic, CR, 0x21);
    out8(&mut nic, CR, 0x25);
    assert_eq!(nic.take_tx(), None);
    assert_eq!(nic.stats().tx_frames, 0);
}

#[test]
fn transmit_queue_is_bounded() {
    let mut nic = started();
    out8(&mut nic, TBCR0, 60);
    for _ in 0..TX_QUEUE_LIMIT + 5 {
        out8(&mut nic, CR, 0x26);
    }
    assert_eq!(nic.tx_pending(), TX_QUEUE_LIMIT);
    assert_eq!(nic.stats().tx_dropped, 5);
}

#[test]
fn receive_writes_header_and_frame_and_advances_curr() {
    let mut nic = started();
    let f = frame(MAC, 300, 1);
    assert_eq!(nic.receive(&f), RxOutcome::Stored);
    // 304 bytes: 2 pages, next at 0x49.
    assert_eq!(curr(&mut nic), 0x49);
    assert_eq!(in8(&mut nic, ISR), isr::PRX);
    assert_eq!(in8(&mut nic, RSR), rsr::PRX);
    assert!(nic.irq_level());
    let got = dma_read(&mut nic, 0x4700, 304);
    assert_eq!(got[..4], [rsr::PRX, 0x49, 0x30, 0x01]);
    assert_eq!(got[4..], f[..]);
    // Undersize: padded to 60, count 64, PHY for broadcast.
    let short = frame([0xFF; 6], 42, 2);
    assert_eq!(nic.receive(&short), RxOutcome::Stored);
    let got = dma_read(&mut nic, 0x4900, 64);
    assert_eq!(got[..4], [rsr::PRX | rsr::PHY, 0x4A, 64, 0]);
    assert_eq!(got[4..46], short[..]);
    assert!(got[46..].iter().all(|&b| b == 0));
    // 252 + 4 = 256 bytes: exactly one page.
    assert_eq!(nic.receive(&frame(MAC, 252, 3)), RxOutcome::Stored);
    assert_eq!(curr(&mut nic), 0x4B);
}

#[test]
fn oversize_from_the_host_is_dropped_and_counted() {
    let mut nic = started();
    assert_eq!(nic.receive(&frame(MAC, 1515, 0)), RxOutcome::Oversize);
    assert_eq!(nic.receive(&vec![0xFF; 65536]), RxOutcome::Oversize);
    assert_eq!(nic.receive(&frame(MAC, 1514, 0)), RxOutcome::Stored);
    assert_eq!(nic.stats().rx_oversize, 2);
    assert_eq!(curr(&mut nic), 0x47 + 6);
}

#[test]
fn receive_wraps_at_pstop() {
    let mut nic = started();
    // Move the ring so that CURR is 2 pages before PSTOP (BNRY just behind it).
    out8(&mut nic, BNRY, 0x7D);
    out8(&mut nic, CR, 0x62);
    out8(&mut nic, CURR, 0x7E);
    out8(&mut nic, CR, 0x22);
    let f = frame(MAC, 1000, 9); // 4 pages: 0x7E, 0x7F, 0x46, 0x47
    assert_eq!(nic.receive(&f), RxOutcome::Stored);
    assert_eq!(curr(&mut nic), 0x48);
    let mut got = dma_read(&mut nic, 0x7E00, 512);
    got.extend(dma_read(&mut nic, 0x4600, 492));
    assert_eq!(got[..4], [rsr::PRX, 0x48, 0xEC, 0x03]);
    assert_eq!(got[4..], f[..]);
    // The remote read wraps the same way: one read from the header gets it all.
    assert_eq!(dma_read(&mut nic, 0x7E00, 1004), got);
}

#[test]
fn full_ring_overflows_without_reaching_bnry() {
    let mut nic = started();
    // 58 pages, BNRY one behind CURR: 56 pages free; 6-page frames: 9 fit.
    for i in 0..9 {
        assert_eq!(nic.receive(&frame(MAC, 1514, i)), RxOutcome::Stored, "{i}");
    }
    let c = curr(&mut nic);
    assert_eq!(c, 0x47 + 54);
    assert_eq!(nic.receive(&frame(MAC, 1514, 9)), RxOutcome::Overflow);
    assert_ne!(in8(&mut nic, ISR) & isr::OVW, 0);
    assert_eq!(curr(&mut nic), c, "nothing written");
    // Pages 0x7D..=0x7F are left; the last one is never filled (CURR never lands on BNRY).
    assert_eq!(nic.receive(&frame(MAC, 200, 10)), RxOutcome::Stored);
    assert_eq!(nic.receive(&frame(MAC, 60, 11)), RxOutcome::Stored);
    assert_eq!(curr(&mut nic), 0x7F);
    assert_eq!(nic.receive(&frame(MAC, 60, 12)), RxOutcome::Overflow);
    assert_eq!(curr(&mut nic), 0x7F);
    assert_eq!(in8(&mut nic, CNTR2), 2);
    assert_eq!(in8(&mut nic, CNTR2), 0, "tallies clear on read");
    assert_eq!(nic.stats().rx_overflow, 2);
    // The host reads the first frame (0x47..=0x4C) and sets BNRY to its last page:
    // 0x7F and 0x46..=0x4B are free, a 6-page frame fits. One page less does not.
    out8(&mut nic, BNRY, 0x4B);
    assert_eq!(nic.receive(&frame(MAC, 1514, 13)), RxOutcome::Overflow);
    out8(&mut nic, BNRY, 0x4C);
    assert_eq!(nic.receive(&frame(MAC, 1514, 13)), RxOutcome::Stored);
    assert_eq!(curr(&mut nic), 0x4B);
}

#[test]
fn bnry_equal_to_curr_means_empty() {
    let mut nic = started();
    out8(&mut nic, BNRY, 0x47);
    // 58 pages, 57 usable.
    let f = frame(MAC, 57 * 256 - 4, 0);
    assert!(f.len() > MAX_FRAME);
    for i in 0..9 {
        assert_eq!(nic.receive(&frame(MAC, 1514, i)), RxOutcome::Stored);
    }
    // 54 used, 3 usable left.
    assert_eq!(nic.receive(&frame(MAC, 3 * 256 - 4, 0)), RxOutcome::Stored);
    assert_eq!(nic.receive(&frame(MAC, 60, 0)), RxOutcome::Overflow);
    assert_eq!(curr(&mut nic), 0x46, "one page before BNRY");
}

#[test]
fn bad_ring_and_stopped_chip_drop_frames() {
    let mut nic = started();
    out8(&mut nic, PSTART, 0x80);
    assert_eq!(nic.receive(&frame(MAC, 60, 0)), RxOutcome::BadRing);
    out8(&mut nic, PSTART, 0x46);
    out8(&mut nic, BNRY, 0x20);
    assert_eq!(nic.receive(&frame(MAC, 60, 0)), RxOutcome::BadRing);
    out8(&mut nic, BNRY, 0x46);
    out8(&mut nic, CR, 0x21);
    assert_eq!(nic.receive(&frame(MAC, 60, 0)), RxOutcome::Stopped);
    assert_eq!(nic.stats().rx_frames, 0);
    // A ring outside card RAM: frames are "stored" into nothing, never out of bounds.
    out8(&mut nic, PSTART, 0x00);
    out8(&mut nic, PSTOP, 0xFF);
    out8(&mut nic, BNRY, 0x00);
    out8(&mut nic, CR, 0x62);
    out8(&mut nic, CURR, 0xF0);
    out8(&mut nic, CR, 0x22);
    assert_eq!(nic.receive(&frame(MAC, 1514, 0)), RxOutcome::Stored);
}

/// The standard reflected CRC-32 (IEEE 802.3), independent of the model's: the Ethernet
/// CRC the DP8390 hashes with is its bit reversal before the final inversion.
fn crc32_ieee(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn address_filter() {
    assert_eq!(crc32_ieee(b"123456789"), 0xCBF4_3926);
    let mcast = [0x01, 0x00, 0x5E, 0x00, 0x00, 0x01];
    let index = ((!crc32_ieee(&mcast)).reverse_bits() >> 26) as u8;
    assert_eq!(ring::multicast_index(&mcast), index);
    let mut nic = started();
    let other = [0x52, 0x54, 0, 0, 0, 1];
    assert_eq!(nic.receive(&frame(other, 60, 0)), RxOutcome::Filtered);
    assert_eq!(nic.receive(&frame(mcast, 60, 0)), RxOutcome::Filtered);
    out8(&mut nic, RCR, 0x0C);
    assert_eq!(
        nic.receive(&frame(mcast, 60, 0)),
        RxOutcome::Filtered,
        "MAR 0"
    );
    out8(&mut nic, CR, 0x62);
    out8(&mut nic, MAR0 + u16::from(index >> 3), 1 << (index & 7));
    out8(&mut nic, CR, 0x22);
    assert_eq!(nic.receive(&frame(mcast, 60, 0)), RxOutcome::Stored);
    out8(&mut nic, RCR, 0x00);
    assert_eq!(nic.receive(&frame([0xFF; 6], 60, 0)), RxOutcome::Filtered);
    out8(&mut nic, RCR, 0x10);
    assert_eq!(nic.receive(&frame(other, 60, 0)), RxOutcome::Stored);
    out8(&mut nic, RCR, 0x30);
    assert_eq!(nic.receive(&frame(other, 60, 0)), RxOutcome::Monitored);
    assert_eq!(nic.stats().rx_filtered, 4);
}

#[test]
fn interrupt_line_follows_isr_and_imr() {
    let mut nic = started();
    out8(&mut nic, IMR, isr::PTX);
    nic.receive(&frame(MAC, 60, 0));
    assert!(!nic.irq_level(), "PRX masked");
    out8(&mut nic, IMR, isr::PRX);
    assert!(nic.irq_level());
    out8(&mut nic, ISR, isr::PTX);
    assert!(nic.irq_level(), "writing 0 to PRX leaves it");
    out8(&mut nic, ISR, isr::PRX);
    assert!(!nic.irq_level());
    // Page 2 reads back the configuration.
    out8(&mut nic, CR, 0xA2);
    assert_eq!(in8(&mut nic, IMR), 0x80 | isr::PRX);
    assert_eq!(in8(&mut nic, PSTART), 0x46);
    assert_eq!(in8(&mut nic, PSTOP), 0x80);
}

#[test]
fn state_round_trips_through_json() {
    let mut nic = started();
    nic.receive(&frame(MAC, 500, 4));
    dma_write(&mut nic, 0x4000, &frame([0xFF; 6], 70, 5));
    out8(&mut nic, TBCR0, 70);
    out8(&mut nic, CR, 0x26);
    out8(&mut nic, RBCR0, 9);
    out8(&mut nic, RSAR1, 0x47);
    out8(&mut nic, CR, 0x0A);
    let json = serde_json::to_string(&nic.state()).unwrap();
    let state: Ne2000State = serde_json::from_str(&json).unwrap();
    let mut back = Ne2000::from_state(&state).unwrap();
    assert_eq!(back.state(), nic.state());
    let mut a = [0; 9];
    let mut b = [0; 9];
    nic.read(DATA, &mut a);
    back.read(DATA, &mut b);
    assert_eq!(a, b);
    assert_eq!(back.take_tx(), nic.take_tx());
}

#[test]
fn corrupt_states_are_refused() {
    let good = started().state();
    Ne2000::from_state(&good).unwrap();
    let bad: [&dyn Fn(&mut Ne2000State); 8] = [
        &|s| s.cr = 0x23,
        &|s| s.cr = 0x26,
        &|s| s.mem.pop().map(drop).unwrap_or(()),
        &|s| s.tx = vec![vec![0; 59]],
        &|s| s.tx = vec![vec![0; 1515]],
        &|s| s.tx = vec![vec![0; 60]; 33],
        &|s| s.dma = DmaState::Read,
        &|s| s.imr = 0x80,
    ];
    for (i, f) in bad.iter().enumerate() {
        let mut s = good.clone();
        f(&mut s);
        assert!(
            matches!(
                Ne2000::from_state(&s),
                Err(crate::StateError::Invalid { .. })
            ),
            "rule {i} not enforced"
        );
    }
    let future = Ne2000State { version: 2, ..good };
    assert!(matches!(
        Ne2000::from_state(&future),
        Err(crate::StateError::Version { .. })
    ));
}

#[derive(Debug, Clone)]
enum Op {
    Read(u16, usize),
    Write(u16, Vec<u8>),
    Receive(usize, u8, bool),
    TakeTx,
}

fn op() -> impl Strategy<Value = Op> {
    let off = prop_oneof![0u16..0x20, any::<u16>()];
    let reg_value = prop_oneof![
        any::<u8>(),
        Just(0x22u8),
        Just(0x0A),
        Just(0x12),
        Just(0x26)
    ];
    prop_oneof![
        (off.clone(), 0usize..8).prop_map(|(o, n)| Op::Read(o, n)),
        (off.clone(), reg_value).prop_map(|(o, v)| Op::Write(o, vec![v])),
        (0x10u16..0x18, prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(o, d)| Op::Write(o, d)),
        (0usize..1600, any::<u8>(), any::<bool>()).prop_map(|(n, s, b)| Op::Receive(n, s, b)),
        Just(Op::TakeTx),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random accesses never panic and keep the invariants; the state survives a save
    /// at the end and the rebuilt card behaves the same.
    #[test]
    fn random_sequences_keep_invariants(ops in prop::collection::vec(op(), 1..300), warm in any::<bool>()) {
        let mut nic = if warm { started() } else { Ne2000::new(MAC) };
        for op in &ops {
            let curr_before = nic.curr;
            match op {
                Op::Read(o, n) => nic.read(*o, &mut vec![0; *n]),
                Op::Write(o, d) => nic.write(*o, d),
                Op::Receive(n, seed, mine) => {
                    let f = frame(if *mine { MAC } else { [0xFF; 6] }, (*n).max(6), *seed);
                    let f = &f[..*n];
                    let outcome = nic.receive(f);
                    if outcome == RxOutcome::Stored {
                        let ring = Ring::new(nic.pstart, nic.pstop, curr_before, nic.bnry).unwrap();
                        prop_assert!(ring.contains(nic.curr));
                        prop_assert!(nic.curr != nic.bnry || curr_before == nic.bnry);
                    } else {
                        prop_assert_eq!(nic.curr, curr_before);
                    }
                    prop_assert_eq!(outcome == RxOutcome::Oversize, *n > MAX_FRAME);
                }
                Op::TakeTx => {
                    if let Some(f) = nic.take_tx() {
                        prop_assert!((MIN_FRAME..=MAX_FRAME).contains(&f.len()));
                    }
                }
            }
            prop_assert!(nic.tx_pending() <= TX_QUEUE_LIMIT);
            let cr = nic.cr;
            prop_assert!(cr & 0x07 == cr::STA || cr & 0x07 == cr::STP, "CR {:#x}", cr);
            prop_assert!(nic.dma == Dma::Idle || nic.rbcr > 0);
            prop_assert_eq!(nic.irq_level(), nic.isr & nic.imr & 0x7F != 0);
        }
        let mut back = Ne2000::from_state(&nic.state()).unwrap();
        for o in [0u16, 3, 7, 0x10, 0x10, 0x0F] {
            prop_assert_eq!(in8(&mut back, o), in8(&mut nic, o));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A restored state is hostile input. The ring and DMA pointers are not refused
    /// whatever they hold (a guest can program every value, so a saved card may hold any),
    /// but a card restored with any of them, then driven at random, never panics, never
    /// touches memory outside its 16 KiB, and stores a frame only in a ring that makes
    /// sense.
    #[test]
    fn a_state_with_any_ring_and_dma_pointers_is_harmless(
        pages in any::<[u8; 5]>(),
        rsar in any::<u16>(),
        rbcr in 1u16..,
        tbcr in any::<u16>(),
        dma in 0u8..3,
        ops in prop::collection::vec(op(), 1..100),
    ) {
        let mut s = started().state();
        [s.pstart, s.pstop, s.curr, s.bnry, s.tpsr] = pages;
        s.rsar = rsar;
        s.rbcr = rbcr;
        s.tbcr = tbcr;
        s.dma = [DmaState::Idle, DmaState::Read, DmaState::Write][usize::from(dma)];
        let mut nic = Ne2000::from_state(&s).unwrap();
        for op in &ops {
            let before = nic.curr;
            match op {
                Op::Read(o, n) => nic.read(*o, &mut vec![0; *n]),
                Op::Write(o, d) => nic.write(*o, d),
                Op::Receive(n, seed, mine) => {
                    let f = frame(if *mine { MAC } else { [0xFF; 6] }, (*n).max(6), *seed);
                    if nic.receive(&f[..*n]) == RxOutcome::Stored {
                        prop_assert!(Ring::new(nic.pstart, nic.pstop, before, nic.bnry).is_some());
                    }
                }
                Op::TakeTx => {
                    if let Some(f) = nic.take_tx() {
                        prop_assert!((MIN_FRAME..=MAX_FRAME).contains(&f.len()));
                    }
                }
            }
            prop_assert_eq!(nic.mem.len(), MEM_SIZE);
        }
    }
}
