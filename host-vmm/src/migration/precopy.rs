//! The RAM side of pre-copy migration: rounds of dirty pages into a [`StreamWriter`] on the
//! source ([`send_ram`]).
//!
//! Round 1 sends every page; each later round sends the pages the dirty log reports since
//! the previous round. The rounds stop when a round's dirty set is at most
//! [`PrecopyConfig::converge_pages`] or after [`PrecopyConfig::max_rounds`]; then `pause`
//! stops the vCPUs and the device threads, and the final round sends what is still dirty
//! (the last set, unsent, plus what changed since). Zero pages go as run-length records.
//! Pages the guest hinted free ([`FreePageHints`]) are skipped, unless written after the
//! hint: a dirty page loses its hint when the log is read.

use std::io::Write;
use std::time::{Duration, Instant};

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

use super::stream::{StreamError, StreamWriter, MAX_PAGES_PER_RECORD, PAGE_SIZE};
use crate::vstate::dirty::{DirtyError, FreePageHints, PageBitmap};

pub use crate::vstate::dirty::NoHints;
use crate::vstate::memory::GuestRam;

/// Errors of the RAM transfer.
#[derive(Debug, Error)]
pub enum PrecopyError {
    /// The stream could not be written.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The dirty log could not be read.
    #[error(transparent)]
    Dirty(#[from] DirtyError),
    /// Guest RAM could not be read.
    #[error("cannot read guest page {0}")]
    Read(u64),
    /// The VM could not be paused for the final round.
    #[error("cannot pause the VM for stop-and-copy: {0}")]
    Pause(String),
}

/// When pre-copy stops iterating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrecopyConfig {
    /// Most rounds while the vCPUs run (≥ 1; the stop-and-copy round comes on top).
    pub max_rounds: u32,
    /// Stop iterating once a round has at most this many dirty pages.
    pub converge_pages: u64,
}

impl Default for PrecopyConfig {
    fn default() -> Self {
        Self {
            max_rounds: 8,
            converge_pages: 64,
        }
    }
}

/// Where dirty pages come from: [`crate::vstate::dirty::DirtyLog`] on a live VM.
pub trait DirtySource {
    /// Pages written since the last call (or since tracking started).
    fn fetch(&mut self) -> Result<PageBitmap, DirtyError>;
}

impl DirtySource for crate::vstate::dirty::DirtyLog {
    fn fetch(&mut self) -> Result<PageBitmap, DirtyError> {
        crate::vstate::dirty::DirtyLog::fetch(self)
    }
}

/// One round's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundStats {
    /// Pages dirty at the start of the round (round 1: all of RAM).
    pub dirty: u64,
    /// Pages sent with content.
    pub data_pages: u64,
    /// Pages sent as zero runs.
    pub zero_pages: u64,
    /// Pages skipped as hinted free.
    pub hinted_pages: u64,
    /// How long the round took.
    pub elapsed: Duration,
    /// How long reading the dirty log after it took (KVM's and the host's bitmaps).
    pub fetch: Duration,
}

/// What [`send_ram`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RamStats {
    /// Every round, the last one being stop-and-copy.
    pub rounds: Vec<RoundStats>,
    /// When `pause` was called (the start of the downtime).
    pub paused_at: Option<Instant>,
}

impl RamStats {
    /// Pages sent with content, all rounds.
    pub fn data_pages(&self) -> u64 {
        self.rounds.iter().map(|r| r.data_pages).sum()
    }
    /// Pages skipped as hinted free, all rounds.
    pub fn hinted_pages(&self) -> u64 {
        self.rounds.iter().map(|r| r.hinted_pages).sum()
    }
}

struct Batch {
    first: u64,
    data: Vec<u8>,
    zero_first: u64,
    zero_count: u64,
}

impl Batch {
    fn flush_data<W: Write>(&mut self, w: &mut StreamWriter<W>) -> Result<(), StreamError> {
        if !self.data.is_empty() {
            w.pages(self.first, &self.data)?;
            self.data.clear();
        }
        Ok(())
    }

    fn flush_zeros<W: Write>(&mut self, w: &mut StreamWriter<W>) -> Result<(), StreamError> {
        if self.zero_count > 0 {
            w.zeros(self.zero_first, self.zero_count)?;
            self.zero_count = 0;
        }
        Ok(())
    }

    fn data_end(&self) -> u64 {
        self.first + self.data.len() as u64 / PAGE_SIZE
    }
}

/// Sends the pages of `set` (skipping hinted ones) from `mem`; counts into `stats`.
fn send_set<W: Write>(
    mem: &GuestRam,
    set: &PageBitmap,
    hints: &dyn FreePageHints,
    w: &mut StreamWriter<W>,
    stats: &mut RoundStats,
) -> Result<(), PrecopyError> {
    let mut page = [0u8; PAGE_SIZE as usize];
    let mut b = Batch {
        first: 0,
        data: Vec::with_capacity((u64::from(MAX_PAGES_PER_RECORD) * PAGE_SIZE) as usize),
        zero_first: 0,
        zero_count: 0,
    };
    for p in set.iter() {
        if hints.is_hinted(p) {
            stats.hinted_pages += 1;
            continue;
        }
        mem.read_slice(&mut page, GuestAddress(p * PAGE_SIZE))
            .map_err(|_| PrecopyError::Read(p))?;
        if page.iter().all(|&x| x == 0) {
            b.flush_data(w)?;
            if b.zero_count > 0 && b.zero_first + b.zero_count != p {
                b.flush_zeros(w)?;
            }
            if b.zero_count == 0 {
                b.zero_first = p;
            }
            b.zero_count += 1;
            stats.zero_pages += 1;
        } else {
            b.flush_zeros(w)?;
            let full = b.data.len() as u64 >= u64::from(MAX_PAGES_PER_RECORD) * PAGE_SIZE;
            if !b.data.is_empty() && (b.data_end() != p || full) {
                b.flush_data(w)?;
            }
            if b.data.is_empty() {
                b.first = p;
            }
            b.data.extend_from_slice(&page);
            stats.data_pages += 1;
        }
    }
    b.flush_data(w)?;
    b.flush_zeros(w)?;
    Ok(())
}

/// Pre-copy: round 1 (all of RAM), rounds while the guest runs, `pause`, the final round.
/// Returns the per-round figures; the caller then sends the VM state and the end record.
/// On an error before `pause` the VM was never paused.
pub fn send_ram<W: Write>(
    mem: &GuestRam,
    log: &mut dyn DirtySource,
    hints: &dyn FreePageHints,
    w: &mut StreamWriter<W>,
    config: PrecopyConfig,
    pause: &mut dyn FnMut() -> Result<(), String>,
) -> Result<RamStats, PrecopyError> {
    let pages = crate::vstate::memory::ram_size(mem) / PAGE_SIZE;
    let mut stats = RamStats::default();
    let mut set = PageBitmap::full(pages);
    let mut round = 1u32;
    loop {
        let t = Instant::now();
        let mut r = RoundStats {
            dirty: set.count(),
            ..RoundStats::default()
        };
        send_set(mem, &set, hints, w, &mut r)?;
        r.elapsed = t.elapsed();
        w.round(round, r.data_pages + r.zero_pages)?;
        let t = Instant::now();
        set = log.fetch()?;
        r.fetch = t.elapsed();
        stats.rounds.push(r);
        hints.clear_dirtied(&set);
        if set.count() <= config.converge_pages || round >= config.max_rounds.max(1) {
            break;
        }
        round += 1;
    }
    // The downtime starts when the pause is asked for: the vCPU stops at the kick.
    let asked = Instant::now();
    pause().map_err(PrecopyError::Pause)?;
    stats.paused_at = Some(asked);
    let t = Instant::now();
    let last = log.fetch()?;
    let fetch = t.elapsed();
    hints.clear_dirtied(&last);
    let mut final_set = set;
    final_set.or_words(0, last.words());
    let mut r = RoundStats {
        dirty: final_set.count(),
        fetch,
        ..RoundStats::default()
    };
    send_set(mem, &final_set, hints, w, &mut r)?;
    r.elapsed = t.elapsed();
    w.round(round + 1, r.data_pages + r.zero_pages)?;
    stats.rounds.push(r);
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::super::stream::{read_stream, Header, VecSink};
    use super::*;
    use crate::vstate::memory::create_ram;
    use std::cell::RefCell;

    /// A dirty log fed by the test: each fetch returns the next set.
    struct Script(Vec<Vec<u64>>, u64);

    impl DirtySource for Script {
        fn fetch(&mut self) -> Result<PageBitmap, DirtyError> {
            let mut b = PageBitmap::new(self.1);
            if !self.0.is_empty() {
                for p in self.0.remove(0) {
                    b.set(p);
                }
            }
            Ok(b)
        }
    }

    struct Hinted(RefCell<PageBitmap>);

    impl FreePageHints for Hinted {
        fn is_hinted(&self, page: u64) -> bool {
            self.0.borrow().get(page)
        }
        fn clear_dirtied(&self, dirty: &PageBitmap) {
            self.0.borrow_mut().subtract(dirty);
        }
    }

    fn fill(mem: &GuestRam, page: u64, byte: u8) {
        mem.write_slice(&[byte; 4096], GuestAddress(page * PAGE_SIZE))
            .unwrap();
    }

    /// Pre-copy over a scripted log: the target ends with exactly the source's RAM as it
    /// was at pause time, hinted pages are not sent unless dirtied, rounds stop at the
    /// threshold.
    #[test]
    fn precopy_converges_and_the_target_gets_the_paused_ram() {
        let src = create_ram(4).unwrap();
        let pages = 1024;
        for p in [1, 2, 3, 500, 1023] {
            fill(&src, p, p as u8);
        }
        // Pages 600..700 hinted free; 650 is written after the hint (dirty in round 2).
        let mut h = PageBitmap::new(pages);
        h.set_range(600, 100);
        let hints = Hinted(RefCell::new(h));
        fill(&src, 650, 0x65);
        // Round 2 sees 100 dirty pages (above the threshold), round 3 sees 2: stop.
        let round2: Vec<u64> = (100..200).chain([650]).collect();
        let mut log = Script(vec![round2, vec![2, 3], vec![3, 7]], pages);
        let mut w = StreamWriter::new(
            Vec::new(),
            Header {
                ram_bytes: 4 << 20,
                authenticated: false,
            },
        )
        .unwrap();
        let mem = &src;
        let mut pause = || {
            // Changes while the guest still ran before the pause: in the final round.
            fill(mem, 3, 0x33);
            fill(mem, 7, 0x77);
            Ok(())
        };
        let cfg = PrecopyConfig {
            max_rounds: 8,
            converge_pages: 10,
        };
        let stats = send_ram(&src, &mut log, &hints, &mut w, cfg, &mut pause).unwrap();
        assert_eq!(stats.rounds.len(), 3, "{stats:?}");
        assert_eq!(stats.rounds[0].dirty, 1024);
        assert_eq!(stats.rounds[0].hinted_pages, 100);
        assert_eq!(stats.rounds[0].data_pages, 5);
        assert_eq!(stats.rounds[1].dirty, 101);
        assert_eq!(
            stats.rounds[1].data_pages, 1,
            "page 650, dirtied after its hint"
        );
        // Final: {2, 3} left from round 3's fetch plus {3, 7} after the pause.
        assert_eq!(stats.rounds[2].dirty, 3);
        assert!(stats.paused_at.is_some());
        w.state(b"state").unwrap();
        let (bytes, _) = w.end().unwrap();
        let mut sink = VecSink(vec![0; 4 << 20]);
        let got = read_stream(&bytes[..], 4 << 20, &mut sink).unwrap();
        assert_eq!(got.rounds, 3);
        let b = sink.0;
        let mut a = vec![0u8; 4 << 20];
        src.read_slice(&mut a, GuestAddress(0)).unwrap();
        // Everything equal but the hinted pages never written after their hint.
        for p in 0..pages {
            let r = (p * 4096) as usize..((p + 1) * 4096) as usize;
            if (600..700).contains(&p) && p != 650 {
                continue;
            }
            assert_eq!(a[r.clone()], b[r], "page {p}");
        }
    }

    /// A pause that fails is reported, and the stream holds no final round.
    #[test]
    fn a_failed_pause_is_an_error() {
        let src = create_ram(4).unwrap();
        let mut log = Script(vec![], 1024);
        let mut w = StreamWriter::new(
            Vec::new(),
            Header {
                ram_bytes: 4 << 20,
                authenticated: false,
            },
        )
        .unwrap();
        let mut pause = || Err("no".to_owned());
        let r = send_ram(
            &src,
            &mut log,
            &NoHints,
            &mut w,
            PrecopyConfig::default(),
            &mut pause,
        );
        assert!(matches!(r, Err(PrecopyError::Pause(_))));
    }
}
