# Guest programs of pvkit-kvm-probe. Linked at 0x10000 (see gen.sh), loaded there by the
# host. 64-bit programs are entered in long mode (identity map of 4 GiB, flat GDT, IDT at
# 0x8000 filled by the host) with RSP set by the host; parameters in RDI/RSI.
# Port 0x500 (OUT, AL = code) tells the host something; 0xff = program finished.
# Data area: 0x30000 (see DATA_* in src/guest.rs).
        .intel_syntax noprefix
        .code64
        .set APIC, 0xfee00000
        .set IOAPIC, 0xfec00000
        .set CNT, 0x30000        # interrupts handled by irq_xapic/irq_x2apic
        .set GPCNT, 0x30008      # #GP faults taken (and skipped)
        .set RES, 0x30010        # result slot 0
        .set RES1, 0x30018       # result slot 1
        .set APMARK, 0x30100     # written by the real-mode AP
        .set APUP, 0x30108       # written by the PV-started AP
        .set BSPCNT, 0x30110     # IPIs received by the BSP
        .set APCNT, 0x30118      # IPIs received by the AP
        .set PVACK, 0x30020      # interrupts acknowledged through PV EOI
        .set PVEOI, 0x30400      # the PV EOI word

        .macro report code
        mov dx, 0x500
        mov al, \code
        out dx, al
        .endm

        .globl _start
_start:
# ---- irq_wait: rdi = interrupts to wait for, rsi = IOAPIC pin; vector 0x30 -------------
        .globl irq_wait
irq_wait:
        mov al, 0xff
        out 0x21, al
        out 0xa1, al
        mov r15, APIC
        mov dword ptr [r15 + 0xf0], 0x1ff
        mov r14, IOAPIC
        lea eax, [rsi*2 + 0x10]
        mov dword ptr [r14], eax
        mov dword ptr [r14 + 0x10], 0x30
        inc eax
        mov dword ptr [r14], eax
        mov dword ptr [r14 + 0x10], 0
        report 1
1:      sti
        hlt
        cli
        mov rax, [CNT]
        cmp rax, rdi
        jb 1b
        report 0xff
        jmp .

# ---- irq_wait_pveoi: enable PV EOI (MSR 0x4b564d04 = PVEOI | 1), then irq_wait ---------
        .globl irq_wait_pveoi
irq_wait_pveoi:
        mov ecx, 0x4b564d04
        mov eax, PVEOI + 1
        xor edx, edx
        wrmsr
        jmp irq_wait

# ---- irq_pic: rdi = interrupts to wait for, PIC IRQ rsi (< 8) at vector 0x30 -----------
        .globl irq_pic
irq_pic:
        mov al, 0x11
        out 0x20, al
        mov al, 0x30
        out 0x21, al
        mov al, 0x04
        out 0x21, al
        mov al, 0x01
        out 0x21, al
        mov al, 0xff
        out 0xa1, al
        mov ecx, esi
        mov eax, 1
        shl eax, cl
        not eax
        out 0x21, al
        report 1
1:      sti
        hlt
        cli
        mov rax, [CNT]
        cmp rax, rdi
        jb 1b
        report 0xff
        jmp .

# ---- eoi_xapic: rdi writes of the xAPIC EOI register between codes 1 and 2 -------------
        .globl eoi_xapic
eoi_xapic:
        mov r15, APIC
        mov dword ptr [r15 + 0xf0], 0x1ff
        mov eax, [r15 + 0x20]
        mov [RES], rax
        report 1
        mov rcx, rdi
1:      mov dword ptr [r15 + 0xb0], 0
        dec rcx
        jnz 1b
        report 2
        report 0xff
        jmp .

# ---- x2apic: enable x2APIC (APIC_BASE |= EXTD|EN), read its ID into RES, rdi EOI writes ---
        .globl eoi_x2apic
eoi_x2apic:
        mov ecx, 0x1b
        rdmsr
        or eax, 0xc00
        wrmsr
        mov ecx, 0x1b
        rdmsr
        mov [RES1], eax
        mov ecx, 0x80f
        mov eax, 0x1ff
        xor edx, edx
        wrmsr
        mov ecx, 0x802
        xor eax, eax
        rdmsr
        mov [RES], rax
        report 1
        mov rsi, rdi
1:      mov ecx, 0x80b
        xor eax, eax
        xor edx, edx
        wrmsr
        dec rsi
        jnz 1b
        report 2
        report 0xff
        jmp .

# ---- self_ipi_xapic: rdi self-IPIs (vector 0x31) through the xAPIC ICR, each waited for ---
        .globl self_ipi_xapic
self_ipi_xapic:
        mov r15, APIC
        mov dword ptr [r15 + 0xf0], 0x1ff
        sti
        report 1
        xor rsi, rsi
1:      mov dword ptr [r15 + 0x300], 0x40031
        inc rsi
2:      cmp [CNT], rsi
        jb 2b
        cmp rsi, rdi
        jb 1b
        report 2
        report 0xff
        jmp .

# ---- self_ipi_pveoi: enable PV EOI, then self_ipi_xapic (host points vector 0x31 at
# irq_pveoi_handler) ------------------------------------------------------------------
        .globl self_ipi_pveoi
self_ipi_pveoi:
        mov ecx, 0x4b564d04
        mov eax, PVEOI + 1
        xor edx, edx
        wrmsr
        jmp self_ipi_xapic

# ---- self_ipi_x2apic: same through the x2APIC SELF_IPI MSR (0x83f), vector 0x32 ---------
        .globl self_ipi_x2apic
self_ipi_x2apic:
        mov ecx, 0x1b
        rdmsr
        or eax, 0xc00
        wrmsr
        mov ecx, 0x80f
        mov eax, 0x1ff
        xor edx, edx
        wrmsr
        sti
        report 1
        xor rsi, rsi
1:      mov ecx, 0x83f
        mov eax, 0x32
        xor edx, edx
        wrmsr
        inc rsi
2:      cmp [CNT], rsi
        jb 2b
        cmp rsi, rdi
        jb 1b
        report 2
        report 0xff
        jmp .

# ---- wrmsr_probe: wrmsr(ecx = edi, edx:eax = rsi); #GPs counted at GPCNT; report 6 (one
# more entry, for KVM's pending requests); rdmsr back to RES
        .globl wrmsr_probe
wrmsr_probe:
        mov ecx, edi
        mov rax, rsi
        mov rdx, rsi
        shr rdx, 32
        wrmsr
        push rdx
        report 6
        pop rdx
        mov ecx, edi
        xor eax, eax
        xor edx, edx
        rdmsr
        shl rdx, 32
        or rax, rdx
        mov [RES], rax
        report 0xff
        jmp .

# ---- sipi: INIT-SIPI-SIPI to APIC ID 1 with start page rdi; wait for APMARK (bounded) ----
        .globl sipi
sipi:
        mov r15, APIC
        mov dword ptr [r15 + 0xf0], 0x1ff
        report 1
        mov dword ptr [r15 + 0x310], 0x01000000
        mov dword ptr [r15 + 0x300], 0x4500
        mov dword ptr [r15 + 0x310], 0x01000000
        mov dword ptr [r15 + 0x300], 0x8500
        mov eax, edi
        or eax, 0x4600
        mov dword ptr [r15 + 0x310], 0x01000000
        mov dword ptr [r15 + 0x300], eax
        mov dword ptr [r15 + 0x310], 0x01000000
        mov dword ptr [r15 + 0x300], eax
        mov rcx, 300000
1:      cmp dword ptr [APMARK], 0xcafe
        je 2f
        pause
        dec rcx
        jnz 1b
2:      report 2
        report 0xff
        jmp .

# ---- ap_entry: a vCPU started by the host in long mode: mark, enable LAPIC, sti; hlt ----
        .globl ap_entry
ap_entry:
        mov dword ptr [APUP], 0xbeef
        report 4
        mov r15, APIC
        mov dword ptr [r15 + 0xf0], 0x1ff
        mov dword ptr [APUP + 4], 1
1:      sti
        hlt
        jmp 1b

# ---- ipi_pingpong (BSP): rdi round trips of IPI 0x40 to APIC 1, answered by IPI 0x41 ----
        .globl ipi_pingpong
ipi_pingpong:
        mov r15, APIC
        mov dword ptr [r15 + 0xf0], 0x1ff
        sti
1:      cmp dword ptr [APUP + 4], 1
        jne 1b
        report 1
        xor rsi, rsi
2:      mov dword ptr [r15 + 0x310], 0x01000000
        mov dword ptr [r15 + 0x300], 0x40
        inc rsi
3:      cmp [BSPCNT], rsi
        jb 3b
        cmp rsi, rdi
        jb 2b
        report 2
        report 0xff
        jmp .

# ---- dirty_writer: write one byte at each of the rsi addresses listed at rdi -------------
        .globl dirty_writer
dirty_writer:
1:      mov rax, [rdi]
        mov byte ptr [rax], 1
        add rdi, 8
        dec rsi
        jnz 1b
        report 0xff
        jmp .

# ---- touch: store each page's address into its first qword, rsi pages from rdi ----------
        .globl touch
touch:
1:      mov [rdi], rdi
        add rdi, 4096
        dec rsi
        jnz 1b
        report 0xff
        jmp .

# ---- count_nonzero: count pages whose first qword is not 0, rsi pages from rdi -> RES ---
        .globl count_nonzero
count_nonzero:
        xor rdx, rdx
1:      cmp qword ptr [rdi], 0
        je 2f
        inc rdx
2:      add rdi, 4096
        dec rsi
        jnz 1b
        mov [RES], rdx
        report 0xff
        jmp .

# ---- counter: rbx counts forever; [RES] = rbx; code 5 every 256 increments ---------------
        .globl counter
counter:
1:      inc rbx
        mov [RES], rbx
        test bl, bl
        jnz 1b
        report 5
        jmp 1b

# ---- handlers ----------------------------------------------------------------------------
        .globl irq_xapic
irq_xapic:
        push rax
        lock inc qword ptr [CNT]
        mov rax, APIC
        mov dword ptr [rax + 0xb0], 0
        pop rax
        iretq

# PV EOI handler: if KVM set the PV EOI flag, clearing it is the acknowledge (no LAPIC
# access); otherwise EOI at the LAPIC. PV acknowledges counted at PVACK.
        .globl irq_pveoi_handler
irq_pveoi_handler:
        push rax
        lock inc qword ptr [CNT]
        btr dword ptr [PVEOI], 0
        jnc 1f
        inc qword ptr [PVACK]
        pop rax
        iretq
1:      mov rax, APIC
        mov dword ptr [rax + 0xb0], 0
        pop rax
        iretq

        .globl irq_pic_handler
irq_pic_handler:
        push rax
        lock inc qword ptr [CNT]
        mov al, 0x20
        out 0x20, al
        pop rax
        iretq

        .globl irq_x2apic
irq_x2apic:
        push rax
        push rcx
        push rdx
        lock inc qword ptr [CNT]
        mov ecx, 0x80b
        xor eax, eax
        xor edx, edx
        wrmsr
        pop rdx
        pop rcx
        pop rax
        iretq

        .globl ipi_ap_handler
ipi_ap_handler:
        push rax
        inc qword ptr [APCNT]
        mov rax, APIC
        mov dword ptr [rax + 0xb0], 0
        mov dword ptr [rax + 0x310], 0
        mov dword ptr [rax + 0x300], 0x41
        pop rax
        iretq

        .globl ipi_bsp_handler
ipi_bsp_handler:
        push rax
        inc qword ptr [BSPCNT]
        mov rax, APIC
        mov dword ptr [rax + 0xb0], 0
        pop rax
        iretq

        .globl gp_handler
gp_handler:
        inc qword ptr [GPCNT]
        add qword ptr [rsp + 8], 2
        add rsp, 8
        iretq

        .globl spurious
spurious:
        iretq

        .globl fatal
fatal:
        report 0xfe
        jmp .

# ---- real-mode AP trampoline (SIPI target; 4 KiB aligned) -------------------------------
        .code16
        .balign 4096
        .globl ap_real
ap_real:
        mov ax, 0x3000
        mov ds, ax
        mov dword ptr [0x100], 0xcafe
        report 3
        cli
1:      hlt
        jmp 1b
        .globl _end_code
_end_code:
