//! The plugin's global allocator: a bump allocator over a static arena, the system allocator past
//! it. The plugin is a process that lives a few milliseconds; musl's allocator, which the static
//! build links, maps and unmaps small regions as the heap grows and shrinks, and on our VMs those
//! `mmap`/`munmap` calls (each unmap a TLB flush) were a third of the plugin's samples under
//! `perf` and 0.24 ms of ADD's 2.4 (alternating runs of 300). Here an allocation is an atomic add
//! in zero-filled `.bss`, which costs nothing until a page is touched; nothing is ever freed,
//! which the process's exit does at once. The arena is far larger than any command needs (ADD
//! uses well under 1 MiB); past it, or for an alignment above a page, memory comes from the
//! system allocator and goes back to it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Virtual size only: a page of it is only backed once written.
pub const ARENA_BYTES: usize = 32 << 20;
const PAGE: usize = 4096;

/// The arena's memory: page-aligned, so an offset aligned to at most a page is an aligned address.
#[repr(C, align(4096))]
pub struct Arena<const N: usize>(pub [u8; N]);

pub struct BumpThenSystem {
    base: *mut u8,
    size: usize,
    /// Offset of the first unused byte of the arena.
    next: AtomicUsize,
}

// SAFETY: `base` is only read; the arena's bytes are handed out in disjoint ranges (see below).
unsafe impl Sync for BumpThenSystem {}

impl BumpThenSystem {
    /// # Safety
    /// `base` is page-aligned and `base..base + size` is memory that nothing but this allocator
    /// reads or writes, for the life of the program.
    pub const unsafe fn new(base: *mut u8, size: usize) -> BumpThenSystem {
        BumpThenSystem { base, size, next: AtomicUsize::new(0) }
    }

    fn in_arena(&self, ptr: *mut u8) -> bool {
        let (p, base) = (ptr as usize, self.base as usize);
        p >= base && p < base + self.size
    }

    /// Takes `size` bytes aligned to `align` (at most a page) from the arena, if they fit.
    fn bump(&self, size: usize, align: usize) -> Option<*mut u8> {
        let mut current = self.next.load(Ordering::Relaxed);
        loop {
            let start = current.checked_add(align - 1)? & !(align - 1);
            let end = start.checked_add(size).filter(|&end| end <= self.size)?;
            match self.next.compare_exchange_weak(current, end, Ordering::Relaxed, Ordering::Relaxed) {
                // SAFETY: start < end <= size: inside the arena.
                Ok(_) => return Some(unsafe { self.base.add(start) }),
                Err(now) => current = now,
            }
        }
    }
}

// SAFETY: every range handed out is inside the arena, aligned as asked, and handed out once (the
// offset only grows, by compare-exchange); everything else is the system allocator's own.
unsafe impl GlobalAlloc for BumpThenSystem {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= PAGE
            && let Some(ptr) = self.bump(layout.size(), layout.align())
        {
            return ptr;
        }
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !self.in_arena(ptr) {
            // SAFETY: not the arena's, so the system allocator's, with the layout it was made with.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // The newest allocation (a Vec or String being filled) grows or shrinks in place.
        if self.in_arena(ptr) {
            let start = ptr as usize - self.base as usize;
            if let Some(new_end) = start.checked_add(new_size).filter(|&end| end <= self.size)
                && self
                    .next
                    .compare_exchange(start + layout.size(), new_end, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                return ptr;
            }
            if new_size <= layout.size() {
                // An older block shrinks where it is; its tail is not used again.
                return ptr;
            }
        }
        // SAFETY: the caller guarantees new_size is valid for the layout's alignment.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a non-zero size, as GlobalAlloc::realloc's contract promises.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for the smaller size and do not overlap (the new one
            // was handed out after the old one, which is still live).
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    const TEST_ARENA: usize = 1 << 16;

    /// An allocator over an arena of its own (the tests run beside the global one).
    fn allocator() -> BumpThenSystem {
        let arena: &'static mut Arena<TEST_ARENA> = Box::leak(Box::new(Arena([0; TEST_ARENA])));
        // SAFETY: leaked, so this allocator's alone for the rest of the test run.
        unsafe { BumpThenSystem::new(arena.0.as_mut_ptr(), TEST_ARENA) }
    }

    fn alloc(a: &BumpThenSystem, l: Layout) -> *mut u8 {
        // SAFETY: the tests' layouts are never zero-sized.
        let p = unsafe { a.alloc(l) };
        assert!(!p.is_null());
        p
    }

    fn realloc(a: &BumpThenSystem, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `p` is live, from `a`, with layout `l`; new_size is non-zero.
        unsafe { a.realloc(p, l, new_size) }
    }

    fn free(a: &BumpThenSystem, p: *mut u8, l: Layout) {
        // SAFETY: `p` is live, from `a`, with layout `l`.
        unsafe { a.dealloc(p, l) }
    }

    fn fill(p: *mut u8, len: usize, value: u8) {
        // SAFETY: `p` is a live block of at least `len` bytes.
        unsafe { p.write_bytes(value, len) }
    }

    fn bytes(p: *mut u8, len: usize) -> Vec<u8> {
        // SAFETY: `p` is a live, written block of at least `len` bytes.
        unsafe { std::slice::from_raw_parts(p, len) }.to_vec()
    }

    #[test]
    fn allocations_are_aligned_disjoint_and_writable() {
        let a = allocator();
        let mut blocks = Vec::new();
        for (i, align) in [1, 8, 16, 64, 4096, 2].into_iter().cycle().take(60).enumerate() {
            let l = layout(1 + i * 7, align);
            let p = alloc(&a, l);
            assert!((p as usize).is_multiple_of(align), "aligned to {align}");
            fill(p, l.size(), i as u8);
            blocks.push((p, l, i as u8));
        }
        for (p, l, v) in &blocks {
            assert!(bytes(*p, l.size()).iter().all(|b| b == v), "no block overwrote another");
        }
        for (p, l, _) in blocks {
            free(&a, p, l);
        }
    }

    #[test]
    fn past_the_arena_and_above_a_page_the_system_allocator_serves() {
        let a = allocator();
        let big = layout(TEST_ARENA + 1, 8);
        let p = alloc(&a, big);
        assert!(!a.in_arena(p));
        free(&a, p, big);
        let wide = layout(64, 2 * PAGE);
        let p = alloc(&a, wide);
        assert!(!a.in_arena(p) && (p as usize).is_multiple_of(2 * PAGE));
        free(&a, p, wide);
        let small = layout(8, 8);
        let p = alloc(&a, small);
        assert!(a.in_arena(p), "the arena still serves what fits");
        free(&a, p, small);
    }

    #[test]
    fn the_newest_block_grows_in_place_and_an_older_one_moves_with_its_bytes() {
        let a = allocator();
        let l = layout(16, 8);
        let first = alloc(&a, l);
        fill(first, 16, 7);
        let grown = realloc(&a, first, l, 64);
        assert_eq!(grown, first, "the newest block grows where it is");
        let second = alloc(&a, l);
        let moved = realloc(&a, grown, layout(64, 8), 128);
        assert_ne!(moved, grown, "an older block cannot grow in place");
        assert_eq!(bytes(moved, 16), [7; 16], "its bytes moved with it");
        let shrunk = realloc(&a, moved, layout(128, 8), 8);
        assert_eq!(shrunk, moved, "shrinking never moves a block");
        free(&a, second, l);
        free(&a, shrunk, layout(8, 8));
    }
}
