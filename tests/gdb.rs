//! `pvkit run --gdb`: a scripted GDB remote-protocol client (no gdb binary) drives the
//! built-in guest kernel: stop before the first instruction at the ELF entry, registers,
//! memory against the ELF file, a hardware breakpoint at `kernel_main` (symbol read from
//! the ELF here, by this test's own parser), step, detach to the guest's normal exit; and
//! `Z0` refused; Ctrl-C (`0x03`) stops a running guest.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Exit status the guest is asked for on its command line.
const EXIT: i32 = 7;

fn u16_at(b: &[u8], o: usize) -> u64 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap()).into()
}
fn u32_at(b: &[u8], o: usize) -> u64 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap()).into()
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// The ELF64 entry point.
fn elf_entry(elf: &[u8]) -> u64 {
    u64_at(elf, 24)
}

/// The file bytes at virtual address `addr`, from the program headers.
fn elf_bytes_at(elf: &[u8], addr: u64, len: usize) -> Vec<u8> {
    let (phoff, phentsize, phnum) = (u64_at(elf, 32), u16_at(elf, 54), u16_at(elf, 56));
    for i in 0..phnum {
        let ph = (phoff + i * phentsize) as usize;
        let (p_type, offset, vaddr, filesz) = (
            u32_at(elf, ph),
            u64_at(elf, ph + 8),
            u64_at(elf, ph + 16),
            u64_at(elf, ph + 32),
        );
        if p_type == 1 && vaddr <= addr && addr + len as u64 <= vaddr + filesz {
            let o = (offset + addr - vaddr) as usize;
            return elf[o..o + len].to_vec();
        }
    }
    panic!("{addr:#x} is in no PT_LOAD segment");
}

/// The value of the symbol in `.symtab` named `name`, or Rust-mangled (legacy scheme)
/// with `name` as its last path segment (`_ZN...11kernel_main17h<hash>E`).
fn elf_symbol(elf: &[u8], name: &str) -> u64 {
    let (shoff, shentsize, shnum) = (u64_at(elf, 40), u16_at(elf, 58), u16_at(elf, 60));
    let sh = |i: u64| (shoff + i * shentsize) as usize;
    for i in 0..shnum {
        let s = sh(i);
        if u32_at(elf, s + 4) != 2 {
            continue; // SHT_SYMTAB
        }
        let (off, size, link, entsize) = (
            u64_at(elf, s + 24),
            u64_at(elf, s + 32),
            u32_at(elf, s + 40),
            u64_at(elf, s + 56),
        );
        let strtab = u64_at(elf, sh(link) + 24) as usize;
        for j in 0..size / entsize {
            let e = (off + j * entsize) as usize;
            let n = strtab + u32_at(elf, e) as usize;
            let end = n + elf[n..].iter().position(|&c| c == 0).unwrap();
            let sym = std::str::from_utf8(&elf[n..end]).unwrap_or("");
            let mangled = format!("{}{name}17h", name.len());
            if sym == name || (sym.starts_with("_ZN") && sym.contains(&mangled)) {
                return u64_at(elf, e + 8);
            }
        }
    }
    panic!("no symbol {name}");
}

/// A minimal RSP client: `$data#cs` packets, acknowledged.
struct Rsp {
    s: TcpStream,
}

impl Rsp {
    fn connect(addr: &str) -> Self {
        let s = TcpStream::connect(addr).expect("connect to pvkit's gdb server");
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        Self { s }
    }

    fn send(&mut self, data: &str) {
        let cs = data.bytes().fold(0u8, |a, b| a.wrapping_add(b));
        write!(self.s, "${data}#{cs:02x}").unwrap();
        let mut ack = [0u8];
        self.s.read_exact(&mut ack).unwrap();
        assert_eq!(ack[0], b'+', "ack of {data}");
    }

    fn recv(&mut self) -> String {
        let mut b = [0u8];
        loop {
            self.s.read_exact(&mut b).expect("read a reply");
            if b[0] == b'$' {
                break;
            }
        }
        let mut data = Vec::new();
        loop {
            self.s.read_exact(&mut b).unwrap();
            if b[0] == b'#' {
                break;
            }
            data.push(b[0]);
        }
        let mut cs = [0u8; 2];
        self.s.read_exact(&mut cs).unwrap();
        let want = data.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        assert_eq!(std::str::from_utf8(&cs).unwrap(), format!("{want:02x}"));
        self.s.write_all(b"+").unwrap();
        // Run-length encoding: `c*k` is `c` and (k - 29) more copies of it.
        let mut out: Vec<u8> = Vec::new();
        let mut it = data.into_iter();
        while let Some(c) = it.next() {
            if c == b'*' {
                let n = it.next().unwrap() - 29;
                let last = *out.last().unwrap();
                out.extend(std::iter::repeat_n(last, n.into()));
            } else {
                out.push(c);
            }
        }
        String::from_utf8(out).unwrap()
    }

    fn ask(&mut self, data: &str) -> String {
        self.send(data);
        self.recv()
    }

    /// `RIP` from a `g` reply: after 16 64-bit registers, little-endian hex.
    fn rip(&mut self) -> u64 {
        let g = self.ask("g");
        let hex = &g[16 * 16..17 * 16];
        let bytes: Vec<u8> = (0..8)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        u64::from_le_bytes(bytes.try_into().unwrap())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts `pvkit run --gdb 127.0.0.1:0` on the built-in guest with `exit=EXIT`; returns
/// it, the address it printed, and a thread collecting the rest of its stderr.
fn start() -> (Child, String, std::thread::JoinHandle<String>) {
    start_with(&format!("exit={EXIT}"))
}

/// [`start`] with the guest command line `cmdline`.
fn start_with(cmdline: &str) -> (Child, String, std::thread::JoinHandle<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pvkit"))
        .args(["run", "--gdb", "127.0.0.1:0", "--", cmdline])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pvkit");
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "pvkit ended early");
        if let Some(a) = line
            .trim()
            .strip_prefix("pvkit: gdb: waiting for a connection on ")
        {
            break a.to_owned();
        }
    };
    let rest = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    (child, addr, rest)
}

fn builtin_elf() -> &'static [u8] {
    pvkit_vmm::guests::builtin_kernel().unwrap()
}

#[test]
fn breakpoint_step_and_detach_on_the_builtin_guest() {
    if !common::builtin_ready() {
        return;
    }
    let elf = builtin_elf();
    let entry = elf_entry(elf);
    let main = elf_symbol(elf, "kernel_main");
    assert_ne!(entry, main);
    let (mut child, addr, rest) = start();
    let mut gdb = Rsp::connect(&addr);
    let features = gdb.ask("qSupported:multiprocess-;swbreak+;hwbreak+");
    assert!(features.contains("hwbreak+"), "{features}");

    // Stopped before the first instruction, at the entry point.
    let stop = gdb.ask("?");
    assert!(stop.starts_with("S05") || stop.starts_with("T05"), "{stop}");
    assert_eq!(gdb.rip(), entry);
    // Guest memory at the entry = the ELF file's bytes there.
    assert_eq!(
        gdb.ask(&format!("m{entry:x},8")),
        hex(&elf_bytes_at(elf, entry, 8))
    );
    // A hardware breakpoint at kernel_main; continue stops there.
    assert_eq!(gdb.ask(&format!("Z1,{main:x},1")), "OK");
    let stop = gdb.ask("c");
    assert!(
        stop.starts_with("T05") && stop.contains("hwbreak"),
        "{stop}"
    );
    assert_eq!(gdb.rip(), main);
    // One step: past the first instruction of kernel_main (at most 15 bytes long).
    // (gdbstub answers a finished step with `S05`: SIGTRAP.)
    let stop = gdb.ask("s");
    assert!(stop.starts_with("S05") || stop.starts_with("T05"), "{stop}");
    let rip = gdb.rip();
    assert!(
        rip > main && rip <= main + 15,
        "rip {rip:#x}, main {main:#x}"
    );
    assert_eq!(gdb.ask(&format!("z1,{main:x},1")), "OK");
    // Detach: the guest runs on to its normal exit.
    assert_eq!(gdb.ask("D"), "OK");
    let status = child.wait().unwrap();
    let err = rest.join().unwrap();
    assert_eq!(status.code(), Some(EXIT), "stderr: {err}");
}

#[test]
fn software_breakpoints_are_refused() {
    if !common::builtin_ready() {
        return;
    }
    let main = elf_symbol(builtin_elf(), "kernel_main");
    let (mut child, addr, rest) = start();
    let mut gdb = Rsp::connect(&addr);
    let stop = gdb.ask("?");
    assert!(stop.starts_with("S05") || stop.starts_with("T05"), "{stop}");
    let reply = gdb.ask(&format!("Z0,{main:x},1"));
    assert!(reply.starts_with('E'), "Z0 answered {reply}");
    // Memory is untouched (no int3 written) and the guest still runs to its exit.
    assert_eq!(
        gdb.ask(&format!("m{main:x},1")),
        hex(&elf_bytes_at(builtin_elf(), main, 1))
    );
    assert_eq!(gdb.ask("D"), "OK");
    let status = child.wait().unwrap();
    let err = rest.join().unwrap();
    assert_eq!(status.code(), Some(EXIT), "stderr: {err}");
    assert!(err.contains("int3 in guest ring 0 kills the vCPU"), "{err}");
}

/// Continuing from a breakpoint steps over it (a hardware breakpoint would fire again at
/// once otherwise): `kernel_main` runs once, so the second `c` ends with the guest's exit
/// (`W07`) while the breakpoint is still set.
#[test]
fn continue_from_a_breakpoint_runs_on_to_the_exit() {
    if !common::builtin_ready() {
        return;
    }
    let main = elf_symbol(builtin_elf(), "kernel_main");
    let (mut child, addr, rest) = start();
    let mut gdb = Rsp::connect(&addr);
    gdb.ask("?");
    assert_eq!(gdb.ask(&format!("Z1,{main:x},1")), "OK");
    let stop = gdb.ask("c");
    assert!(stop.starts_with("T05"), "{stop}");
    assert_eq!(gdb.rip(), main);
    assert_eq!(gdb.ask("c"), format!("W{EXIT:02x}"));
    let status = child.wait().unwrap();
    let err = rest.join().unwrap();
    assert_eq!(status.code(), Some(EXIT), "stderr: {err}");
}

/// The client's Ctrl-C (a raw `0x03` byte) stops a guest that spins forever: the stop is
/// reported as SIGINT, the vCPU stays stopped (its `RIP` does not move) inside the kernel
/// image, it can be continued and interrupted again, and `k` ends the run.
#[test]
fn ctrl_c_interrupts_a_running_guest() {
    if !common::builtin_ready() {
        return;
    }
    let elf = builtin_elf();
    let (mut child, addr, rest) = start_with("spin");
    let mut gdb = Rsp::connect(&addr);
    gdb.ask("?");
    for round in 0..2 {
        // `c` has no reply until the guest stops.
        gdb.send("c");
        std::thread::sleep(Duration::from_millis(300));
        gdb.s.write_all(&[0x03]).unwrap();
        let stop = gdb.recv();
        assert!(
            stop.starts_with("S02") || stop.starts_with("T02"),
            "round {round}: Ctrl-C answered {stop}"
        );
        let rip = gdb.rip();
        // Stopped: RIP stays where it is; and it is kernel code (the spin loop).
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(gdb.rip(), rip, "round {round}: the guest still runs");
        assert_eq!(
            gdb.ask(&format!("m{rip:x},1")),
            hex(&elf_bytes_at(elf, rip, 1)),
            "round {round}: rip {rip:#x}"
        );
    }
    // Kill: no reply; pvkit ends with the debugger's stop.
    gdb.send("k");
    let status = child.wait().unwrap();
    let err = rest.join().unwrap();
    assert_ne!(status.code(), Some(0), "stderr: {err}");
    assert!(err.contains("killed by the debugger"), "{err}");
}
