//! The few system calls and CPU hints that the sans-I/O modules need: thread affinity,
//! transparent huge pages, cache prefetch. Everything here is a hint or best effort: a
//! failure changes speed, never results. This is the one module outside `io` and `plugin`
//! allowed `unsafe` (the crate root denies it elsewhere); each block says why it is sound.
#![allow(unsafe_code)]

/// Asks the kernel to back the allocation of `v` with transparent huge pages when it is
/// big (at least 4 MiB): with `transparent_hugepage=madvise`, the common default, nothing
/// is huge unless asked. A hint: failure (no THP, another OS) changes nothing.
pub(crate) fn huge_pages<T>(v: &Vec<T>) {
    const HUGE: usize = 2 << 20;
    let bytes = v.capacity() * std::mem::size_of::<T>();
    if bytes < 2 * HUGE {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // The 2 MiB-aligned part of the allocation.
        let start = (v.as_ptr() as usize).next_multiple_of(HUGE);
        let end = (v.as_ptr() as usize + bytes) & !(HUGE - 1);
        if end > start {
            // SAFETY: [start, end) lies inside the vector's allocation, which stays mapped
            // while `v` lives; MADV_HUGEPAGE changes how the pages are backed, not their
            // contents, and fails harmlessly where THP is unavailable.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
}

/// Asks the CPU to start loading the `len` bytes at `r` into the cache (a hint: never
/// faults, changes nothing).
#[inline(always)]
pub(crate) fn prefetch<T: ?Sized>(r: &T, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let p = (r as *const T).cast::<i8>();
        let mut off = 0;
        while off < len {
            // SAFETY: `p + off` lies inside the object `r` refers to (off < len, its size);
            // a prefetch reads nothing architecturally and cannot fault.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.add(off));
            }
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (r, len);
}
/// Pins the calling thread to CPU `cpu` (modulo the CPUs available); best effort.
pub fn pin_to_cpu(cpu: usize) -> bool {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it; the call
    // reads `size_of::<cpu_set_t>()` bytes of it and affects only this thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % n, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}
