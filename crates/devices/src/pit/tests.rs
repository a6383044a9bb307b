use super::*;

const C0: u16 = PIT_PORT_COUNTER0;
const C2: u16 = PIT_PORT_COUNTER2;
const CTRL: u16 = PIT_PORT_CONTROL;

/// The earliest time in ns at which exactly `t` input clock ticks have elapsed.
fn at(t: u64) -> u64 {
    (t * 1_000_000_000).div_ceil(PIT_FREQ_HZ)
}

/// Programs counter `c` with mode `mode`, LSB-then-MSB access, and loads `count` at
/// tick `t`.
fn program(pit: &mut Pit, c: u8, mode: u8, count: u16, t: u64) {
    pit.write(CTRL, (c << 6) | 0x30 | (mode << 1), at(t));
    let [lo, hi] = count.to_le_bytes();
    pit.write(C0 + u16::from(c), lo, at(t));
    pit.write(C0 + u16::from(c), hi, at(t));
}

/// Latches counter `c` and reads the latched value (LSB, MSB) at tick `t`.
fn latched(pit: &mut Pit, c: u8, t: u64) -> u16 {
    pit.write(CTRL, c << 6, at(t));
    let lo = pit.read(C0 + u16::from(c), at(t));
    let hi = pit.read(C0 + u16::from(c), at(t));
    u16::from_le_bytes([lo, hi])
}

#[test]
fn ticks_conversion() {
    assert_eq!(counter::ticks(0), 0);
    assert_eq!(counter::ticks(1_000_000_000), PIT_FREQ_HZ);
    for t in [1, 2, 17, 1000, 65536, 10_000_000] {
        assert_eq!(counter::ticks(at(t)), t);
        assert_eq!(counter::ticks(at(t) - 1), t - 1);
    }
    // No overflow at the end of time.
    assert!(counter::ticks(u64::MAX) > 0);
}

#[test]
fn mode0_counts_down_once_and_wraps() {
    let mut pit = Pit::new();
    pit.write(CTRL, 0x30, 0); // counter 0, lo/hi, mode 0
    assert_eq!(
        pit.output(0, 0),
        Some(false),
        "mode 0 control word drives OUT low"
    );
    program(&mut pit, 0, 0, 1000, 500);
    assert_eq!(latched(&mut pit, 0, 500), 1000);
    assert_eq!(latched(&mut pit, 0, 600), 900);
    assert_eq!(latched(&mut pit, 0, 1499), 1);
    assert_eq!(pit.output(0, at(1499)), Some(false));
    assert_eq!(latched(&mut pit, 0, 1500), 0);
    assert_eq!(
        pit.output(0, at(1500)),
        Some(true),
        "OUT rises at terminal count"
    );
    assert_eq!(
        latched(&mut pit, 0, 1505),
        65531,
        "keeps counting through 0"
    );
    assert_eq!(pit.output(0, at(100_000)), Some(true), "and OUT stays high");
}

#[test]
fn mode2_rate_generator() {
    let mut pit = Pit::new();
    program(&mut pit, 0, 2, 100, 0);
    assert_eq!(latched(&mut pit, 0, 0), 100);
    assert_eq!(latched(&mut pit, 0, 1), 99);
    assert_eq!(latched(&mut pit, 0, 99), 1);
    assert_eq!(
        pit.output(0, at(99)),
        Some(false),
        "OUT low while the count is 1"
    );
    assert_eq!(latched(&mut pit, 0, 100), 100, "reloads, never reads 0");
    assert_eq!(pit.output(0, at(100)), Some(true));
    assert_eq!(latched(&mut pit, 0, 250), 50);
    assert_eq!(latched(&mut pit, 0, 1_000_099), 1);
}

#[test]
fn mode3_square_wave_even_count() {
    let mut pit = Pit::new();
    program(&mut pit, 0, 3, 10, 0);
    let counts: Vec<u16> = (0..12).map(|t| latched(&mut pit, 0, t)).collect();
    assert_eq!(counts, [10, 8, 6, 4, 2, 10, 8, 6, 4, 2, 10, 8]);
    let outs: Vec<bool> = (0..12)
        .map(|t| pit.output(0, at(t)).unwrap_or_default())
        .collect();
    let high = [true; 5];
    let low = [false; 5];
    assert_eq!(&outs[..5], &high);
    assert_eq!(&outs[5..10], &low);
    assert!(outs[10]);
}

#[test]
fn mode3_square_wave_odd_count() {
    let mut pit = Pit::new();
    program(&mut pit, 0, 3, 5, 0);
    // High for 3 ticks (4, 2, 0), low for 2 (4, 2).
    let counts: Vec<u16> = (0..10).map(|t| latched(&mut pit, 0, t)).collect();
    assert_eq!(counts, [4, 2, 0, 4, 2, 4, 2, 0, 4, 2]);
    let outs: Vec<bool> = (0..5)
        .map(|t| pit.output(0, at(t)).unwrap_or_default())
        .collect();
    assert_eq!(outs, [true, true, true, false, false]);
}

#[test]
fn modes_6_and_7_alias_2_and_3() {
    let mut pit = Pit::new();
    program(&mut pit, 0, 6, 100, 0);
    assert_eq!(latched(&mut pit, 0, 100), 100);
    program(&mut pit, 1, 7, 10, 0);
    assert_eq!(latched(&mut pit, 1, 1), 8);
}

#[test]
fn lo_hi_flip_flop_and_single_byte_modes() {
    let mut pit = Pit::new();
    program(&mut pit, 0, 2, 0x1234, 0);
    // Live reads at a fixed time alternate LSB, MSB.
    assert_eq!(pit.read(C0, 0), 0x34);
    assert_eq!(pit.read(C0, 0), 0x12);
    assert_eq!(pit.read(C0, 0), 0x34);
    // A control word resets the flip-flop.
    program(&mut pit, 0, 2, 0x1234, 0);
    assert_eq!(pit.read(C0, 0), 0x34);

    // LSB-only access: one byte loads the count, reads return the LSB.
    pit.write(CTRL, 0x40 | 0x10 | (2 << 1), 0);
    pit.write(0x41, 0x50, 0);
    assert_eq!(pit.read(0x41, at(0x10)), 0x40);
    assert_eq!(pit.read(0x41, at(0x10)), 0x40);
    // MSB-only access: the byte is the high half of the count.
    pit.write(CTRL, 0x40 | 0x20 | (2 << 1), 0);
    pit.write(0x41, 0x12, 0);
    assert_eq!(pit.read(0x41, at(0x100)), 0x11);
    pit.write(CTRL, 0x40, at(0x100));
    assert_eq!(pit.read(0x41, at(0x100)), 0x11, "latched MSB-only read");
    assert_eq!(
        pit.read(0x41, at(0x101)),
        0x10,
        "latch consumed: live value"
    );
}

#[test]
fn latch_freezes_until_both_bytes_read() {
    let mut pit = Pit::new();
    program(&mut pit, 0, 2, 1000, 0);
    pit.write(CTRL, 0x00, at(10));
    let lo = pit.read(C0, at(500));
    // A second latch while the first is unread is ignored.
    pit.write(CTRL, 0x00, at(600));
    let hi = pit.read(C0, at(900));
    assert_eq!(u16::from_le_bytes([lo, hi]), 990);
    // Consumed: the next latch captures a new value.
    assert_eq!(latched(&mut pit, 0, 900), 100);
}

#[test]
fn read_back_status_and_count() {
    let mut pit = Pit::new();
    // After a control word the null count bit is set until a count is loaded.
    pit.write(CTRL, 0x80 | 0x30 | (3 << 1) | 1, 0); // counter 2, lo/hi, mode 3, BCD
    pit.write(CTRL, 0xC0 | 0x20 | 0x08, 0); // read-back status only, counter 2
    assert_eq!(
        pit.read(C2, 0),
        0x80 | 0x40 | 0x37,
        "OUT high, null count, control"
    );

    let mut pit = Pit::new();
    program(&mut pit, 0, 2, 1000, 0);
    program(&mut pit, 1, 0, 50, 0);
    // Latch count and status of counters 0 and 1.
    pit.write(CTRL, 0xC0 | 0x02 | 0x04, at(60));
    // Status first, then count.
    assert_eq!(pit.read(C0, at(70)), 0x80 | 0x34);
    assert_eq!(pit.read(C0, at(80)), (940u16 & 0xFF) as u8);
    assert_eq!(pit.read(C0, at(90)), (940u16 >> 8) as u8);
    // Counter 1 in mode 0 has reached terminal count: OUT high, count wrapped.
    assert_eq!(pit.read(0x41, at(900)), 0x80 | 0x30);
    assert_eq!(pit.read(0x41, at(900)), 0xF6); // 50 - 60 = -10 = 0xFFF6
    assert_eq!(pit.read(0x41, at(900)), 0xFF);

    // Count-only read-back latches without status.
    pit.write(CTRL, 0xC0 | 0x10 | 0x02, at(1000));
    assert_eq!(pit.read(C0, at(1200)), 0xE8); // 1000 = 0x03E8
    assert_eq!(pit.read(C0, at(1200)), 0x03);
}

#[test]
fn reload_zero_means_65536() {
    let mut pit = Pit::new();
    program(&mut pit, 0, 2, 0, 0);
    assert_eq!(latched(&mut pit, 0, 0), 0);
    assert_eq!(latched(&mut pit, 0, 1), 65535);
    assert_eq!(latched(&mut pit, 0, 65535), 1);
    assert_eq!(latched(&mut pit, 0, 65536), 0, "period is 65536 ticks");
    assert_eq!(latched(&mut pit, 0, 65537), 65535);

    program(&mut pit, 1, 0, 0, 0);
    assert_eq!(latched(&mut pit, 1, 1), 65535);
    assert_eq!(pit.output(1, at(65535)), Some(false));
    assert_eq!(pit.output(1, at(65536)), Some(true));

    program(&mut pit, 2, 3, 0, 0);
    pit.write(PIT_PORT_B, 0x01, 0);
    assert_eq!(latched(&mut pit, 2, 1), 65534);
    assert_eq!(pit.output(2, at(32767)), Some(true));
    assert_eq!(pit.output(2, at(32768)), Some(false));
}

#[test]
fn mode2_new_count_waits_for_end_of_period() {
    let mut pit = Pit::new();
    program(&mut pit, 0, 2, 100, 0);
    pit.write(C0, 50, at(30));
    pit.write(C0, 0, at(30));
    pit.write(CTRL, 0xE2, at(60)); // status only
    assert_ne!(
        pit.read(C0, at(60)) & 0x40,
        0,
        "null count until the reload"
    );
    assert_eq!(latched(&mut pit, 0, 60), 40);
    assert_eq!(latched(&mut pit, 0, 100), 50);
    assert_eq!(latched(&mut pit, 0, 120), 30);
    assert_eq!(latched(&mut pit, 0, 150), 50);
    pit.write(CTRL, 0xE2, at(150));
    assert_eq!(pit.read(C0, at(150)) & 0x40, 0);
}

#[test]
fn mode3_new_count_waits_for_end_of_half_period() {
    let mut pit = Pit::new();
    program(&mut pit, 0, 3, 100, 0);
    // t = 10 is in the high half (ends at 50); the new count 20 starts low at t = 50.
    pit.write(C0, 20, at(10));
    pit.write(C0, 0, at(10));
    assert_eq!(latched(&mut pit, 0, 49), 2);
    assert_eq!(latched(&mut pit, 0, 50), 20);
    assert_eq!(pit.output(0, at(50)), Some(false));
    assert_eq!(pit.output(0, at(59)), Some(false));
    assert_eq!(pit.output(0, at(60)), Some(true));
    assert_eq!(latched(&mut pit, 0, 61), 18);
}

#[test]
fn mode0_rewrite_stops_then_restarts() {
    let mut pit = Pit::new();
    program(&mut pit, 0, 0, 1000, 0);
    pit.write(C0, 0xF4, at(100)); // LSB of 500: counting stops
    assert_eq!(latched(&mut pit, 0, 300), 900);
    pit.write(C0, 0x01, at(300)); // MSB: restart from 500
    assert_eq!(latched(&mut pit, 0, 400), 400);
}

#[test]
fn counter2_gate_and_output_via_port_b() {
    let mut pit = Pit::new();
    // Linux-style TSC calibration: mode 0 on counter 2 with GATE low, then raise GATE.
    pit.write(PIT_PORT_B, 0x00, 0);
    program(&mut pit, 2, 0, 100, 0);
    assert_eq!(latched(&mut pit, 2, 1000), 100, "GATE low: not counting");
    assert_eq!(pit.read(PIT_PORT_B, at(1000)) & 0x21, 0);
    pit.write(PIT_PORT_B, 0x01, at(1000));
    assert_eq!(latched(&mut pit, 2, 1050), 50);
    assert_eq!(pit.read(PIT_PORT_B, at(1099)) & 0x21, 0x01, "OUT2 low");
    assert_eq!(pit.read(PIT_PORT_B, at(1100)) & 0x21, 0x21, "OUT2 high");

    // Mode 2: GATE low stops counting and forces OUT high; rising edge restarts.
    program(&mut pit, 2, 2, 100, 2000);
    pit.write(PIT_PORT_B, 0x00, at(2030));
    assert_eq!(latched(&mut pit, 2, 2500), 70);
    pit.write(PIT_PORT_B, 0x03, at(2500));
    assert_eq!(latched(&mut pit, 2, 2510), 90);
    assert_eq!(
        pit.read(PIT_PORT_B, at(2510)) & 0x03,
        0x03,
        "speaker bit stored"
    );

    // The refresh bit toggles with time.
    let r0 = pit.read(PIT_PORT_B, at(0)) & 0x10;
    let r1 = pit.read(PIT_PORT_B, at(18)) & 0x10;
    assert_ne!(r0, r1);
}

#[test]
fn unknown_ports_and_channels() {
    let mut pit = Pit::new();
    assert_eq!(pit.read(CTRL, 0), 0xFF);
    assert_eq!(pit.read(0x44, 0), 0xFF);
    assert_eq!(pit.read(0x3F, 0), 0xFF);
    pit.write(0x44, 0x12, 0);
    assert_eq!(pit.output(3, 0), None);
    assert_eq!(pit.output(usize::MAX, 0), None);
}

#[test]
fn time_going_backwards_does_not_panic() {
    let mut pit = Pit::new();
    program(&mut pit, 0, 2, 100, 1000);
    assert_eq!(latched(&mut pit, 0, 10), 100);
    program(&mut pit, 0, 3, 7, 1000);
    pit.write(C0, 3, at(5));
    pit.write(C0, 0, at(5));
    let _ = latched(&mut pit, 0, 0);
}

mod proptests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Read(u16),
        Write(u16, u8),
    }

    fn port_strategy() -> impl Strategy<Value = u16> {
        prop_oneof![
            8 => 0x40u16..=0x43,
            2 => Just(0x61u16),
            1 => any::<u16>(),
        ]
    }

    fn op_strategy() -> impl Strategy<Value = (Op, i64)> {
        let op = prop_oneof![
            port_strategy().prop_map(Op::Read),
            (port_strategy(), any::<u8>()).prop_map(|(p, v)| Op::Write(p, v)),
        ];
        // Mostly small forward steps, sometimes huge or backwards ones.
        let dt = prop_oneof![
            8 => 0i64..100_000,
            1 => 0i64..i64::MAX,
            1 => -1_000_000i64..0,
        ];
        (op, dt)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn pit_survives_random_traffic(ops in prop::collection::vec(op_strategy(), 1..300)) {
            let mut pit = Pit::new();
            let mut now: u64 = 0;
            for (op, dt) in ops {
                now = now.saturating_add_signed(dt);
                match op {
                    Op::Read(port) => {
                        pit.read(port, now);
                    }
                    Op::Write(port, value) => pit.write(port, value, now),
                }
                for channel in 0..3 {
                    prop_assert!(pit.output(channel, now).is_some());
                }
            }
        }
    }
}
