// Linked into the function package only (scripts/package.sh --lambda, with -Wl,--wrap=NAME for each NAME below):
// this machine's glibc is 2.36, a function's (Amazon Linux 2023) 2.34. Three static archives the package links
// were built against a newer glibc and call functions that 2.34 lacks; each wrapper gives them what 2.34 has.
// Nothing else in the binary may need a newer symbol: scripts/check-lambda-binary.sh fails the build if it does.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>

// hypot and hypotf (Swift's Glibc overlay, Foundation's CGFloat) got new symbol versions in 2.35 (a faster
// implementation, same results); the x86-64 baseline versions exist in every glibc.
__asm__(".symver compat_hypot, hypot@GLIBC_2.2.5");
__asm__(".symver compat_hypotf, hypotf@GLIBC_2.2.5");
double compat_hypot(double, double);
float compat_hypotf(float, float);
double __wrap_hypot(double x, double y) { return compat_hypot(x, y); }
float __wrap_hypotf(float x, float y) { return compat_hypotf(x, y); }

// arc4random (2.36) feeds libstdc++'s std::random_device; getrandom (2.25) is the same kernel source.
uint32_t __wrap_arc4random(void) {
    uint32_t value;
    while (getrandom(&value, sizeof value, 0) != (ssize_t)sizeof value) {}
    return value;
}

// _dl_find_object (2.35) is how libgcc's unwinder (static: -static-libgcc) finds a PC's unwind tables. Use the
// real one where the running glibc has it; else find the object and its PT_GNU_EH_FRAME with dl_iterate_phdr,
// as libgcc itself did before 2.35.
struct find_request {
    uintptr_t pc;
    struct dl_find_object *result;
    int found;
};

static int find_in_object(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    struct find_request *request = data;
    const ElfW(Phdr) *eh_frame = NULL;
    int contains = 0;
    uintptr_t start = UINTPTR_MAX, end = 0;
    for (ElfW(Half) i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *phdr = &info->dlpi_phdr[i];
        if (phdr->p_type == PT_GNU_EH_FRAME) eh_frame = phdr;
        if (phdr->p_type != PT_LOAD) continue;
        uintptr_t from = info->dlpi_addr + phdr->p_vaddr, to = from + phdr->p_memsz;
        if (from < start) start = from;
        if (to > end) end = to;
        if (request->pc >= from && request->pc < to) contains = 1;
    }
    if (!contains) return 0;
    memset(request->result, 0, sizeof *request->result);
    request->result->dlfo_map_start = (void *)start;
    request->result->dlfo_map_end = (void *)end;
    request->result->dlfo_eh_frame = eh_frame ? (void *)(info->dlpi_addr + eh_frame->p_vaddr) : NULL;
    request->found = 1;
    return 1;
}

int __wrap__dl_find_object(void *pc, struct dl_find_object *result) {
    static int (*real)(void *, struct dl_find_object *);
    static int looked;
    if (!__atomic_load_n(&looked, __ATOMIC_ACQUIRE)) {
        __atomic_store_n(&real, (int (*)(void *, struct dl_find_object *))dlsym(RTLD_DEFAULT, "_dl_find_object"),
                         __ATOMIC_RELAXED);
        __atomic_store_n(&looked, 1, __ATOMIC_RELEASE);
    }
    int (*found)(void *, struct dl_find_object *) = __atomic_load_n(&real, __ATOMIC_RELAXED);
    if (found) return found(pc, result);
    struct find_request request = {(uintptr_t)pc, result, 0};
    dl_iterate_phdr(find_in_object, &request);
    return request.found ? 0 : -1;
}
