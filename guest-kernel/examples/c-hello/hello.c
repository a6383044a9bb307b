/*
 * c-hello: a pvkit guest in C, on the generated ABI header alone.
 *
 * Prints a line through the PV console, registers the PV clock page and reads the time
 * from it (no exit), and exits with code 42 (43 if the clock did not work).
 *
 * Build (see README.md):
 *   gcc -O2 -ffreestanding -fno-pie -no-pie -mno-sse -mno-mmx -mno-red-zone -mcmodel=kernel \
 *       -fno-stack-protector -fno-asynchronous-unwind-tables -nostdlib -static \
 *       -I ../../../abi/include -T linker.ld -Wl,--build-id=none -Wl,--no-warn-rwx-segments -o c-hello hello.c
 */
#include <stddef.h>
#include <stdint.h>

#include "pvkit_abi.h"

/* The ABI version note: the VMM refuses a guest without it. */
PVKIT_ABI_NOTE();

/* The result of a hypercall: RAX (status) and RDX (value). */
struct pvkit_result {
    int64_t status;
    uint64_t value;
};

/* One hypercall: `out dx, eax` with DX = the hypercall port, EAX = the call number, and
 * arguments in RDI, RSI, R8, R9. RAX and RDX are clobbered with the result. */
static inline struct pvkit_result pvkit_call(uint32_t nr, uint64_t a0, uint64_t a1,
                                             uint64_t a2, uint64_t a3)
{
    uint64_t rax = nr;
    uint64_t rdx = PVKIT_HYPERCALL;
    register uint64_t r8 __asm__("r8") = a2;
    register uint64_t r9 __asm__("r9") = a3;
    __asm__ volatile("outl %%eax, %%dx"
                     : "+a"(rax), "+d"(rdx)
                     : "D"(a0), "S"(a1), "r"(r8), "r"(r9)
                     : "memory");
    return (struct pvkit_result){(int64_t)rax, rdx};
}

static size_t length(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

static void print(const char *s)
{
    pvkit_call(PVKIT_HYPERCALL_CONSOLE_WRITE, (uint64_t)(uintptr_t)s, length(s), 0, 0);
}

/* Decimal, without division by a variable (no libgcc). */
static void print_u64(uint64_t v)
{
    char buf[21];
    int i = 20;
    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    print(&buf[i]);
}

static __attribute__((noreturn)) void pvkit_exit(uint8_t code)
{
    pvkit_call(PVKIT_HYPERCALL_EXIT, code, 0, 0, 0);
    for (;;)
        __asm__ volatile("cli; hlt");
}

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("lfence; rdtsc" : "=a"(lo), "=d"(hi));
    return (uint64_t)hi << 32 | lo;
}

/* The PV clock page: 4 KiB aligned, in .bss. */
static volatile PVKIT_PvClock clock_page[4096 / sizeof(PVKIT_PvClock)]
    __attribute__((aligned(4096)));

/* Nanoseconds from the clock page (docs/ABI.md, "Clock"): version-guarded, and the
 * multiply in 128 bits. */
static uint64_t clock_ns(void)
{
    volatile PVKIT_PvClock *c = &clock_page[0];
    for (;;) {
        uint32_t v = c->version;
        if (v & 1)
            continue;
        __asm__ volatile("" ::: "memory");
        uint64_t tsc = rdtsc();
        uint64_t delta = tsc - c->tsc_timestamp;
        int8_t shift = c->tsc_shift;
        delta = shift < 0 ? delta >> -shift : delta << shift;
        uint64_t ns = c->system_time +
                      (uint64_t)(((unsigned __int128)delta * c->tsc_to_system_mul) >> 32);
        __asm__ volatile("" ::: "memory");
        if (c->version == v)
            return ns;
    }
}

__attribute__((used, noreturn)) void kmain(const PVKIT_BootInfo *boot);
__attribute__((used, noreturn)) void kmain(const PVKIT_BootInfo *boot)
{
    if (boot->magic != PVKIT_BOOT_MAGIC)
        pvkit_exit(1);
    print("hello from C over the pvkit PV console\n");

    /* This vCPU's clock page: page 0 of the CPU class, registered per vCPU. */
    struct pvkit_result r = pvkit_call(PVKIT_HYPERCALL_REGISTER_REGION, PVKIT_CLOCK_PAGE_REGION,
                                       (uint64_t)(uintptr_t)clock_page, 4096,
                                       PVKIT_REGION_PER_VCPU);
    if (r.status != PVKIT_STATUS_OK || clock_page[0].version == 0) {
        print("no PV clock\n");
        pvkit_exit(43);
    }
    uint64_t t0 = clock_ns();
    uint64_t t1 = clock_ns();
    print("pv clock: ");
    print_u64(t0);
    print(" ns since boot, ");
    print(t1 >= t0 ? "monotonic\n" : "went backwards\n");
    pvkit_exit(t1 >= t0 ? 42 : 44);
}

/* The entry point: RDI = the BootInfo, RSP 16-byte aligned (no return address). */
__attribute__((naked, section(".text.start"))) void _start(void)
{
    __asm__ volatile("and $-16, %rsp\n\t"
                     "call kmain\n\t"
                     "ud2");
}
