//! Erasing what one connection left in a parser child's memory before the next one.
//!
//! A reused child must not hand a later connection the bytes of an earlier one. Once
//! [`enable`] has run, the global allocator zeroes every block when it is freed or moved
//! by a reallocation, and [`erase_stack`] zeroes the stack below the caller. Both use
//! glibc's explicit_bzero, which the compiler may not remove as a dead store.
//!
//! Trusted input: none. The allocator only forwards Rust's own requests to the system
//! allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether freed memory is zeroed. Off in the monitor, whose frees gain nothing from it.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Stack bytes [`erase_stack`] zeroes. The serve loop and the JSON parser run in frames
/// well below this size (estimate from their locals, not measured).
const STACK_BYTES: usize = 64 * 1024;

/// The system allocator, zeroing blocks before it frees them once [`enable`] has run.
pub struct ScrubbingAllocator;

/// Makes the allocator zero every block it frees from now on. The parser child calls
/// it before it reads any client byte.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Zeroes `length` bytes at `start`.
///
/// # Safety
/// `start` must be valid for writes of `length` bytes.
unsafe fn erase(start: *mut u8, length: usize) {
    // SAFETY: the caller guarantees that the range is writable.
    unsafe { libc::explicit_bzero(start.cast(), length) };
}

// SAFETY: every method forwards to `System` with the caller's arguments, and erase()
// writes only inside a block that the caller owns and is about to give up.
unsafe impl GlobalAlloc for ScrubbingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout, as GlobalAlloc requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if ENABLED.load(Ordering::Relaxed) {
            // SAFETY: the caller owns `block`, which is `layout.size()` bytes long.
            unsafe { erase(block, layout.size()) };
        }
        // SAFETY: `block` came from this allocator with `layout`.
        unsafe { System.dealloc(block, layout) }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !ENABLED.load(Ordering::Relaxed) {
            // SAFETY: forwarded with the caller's arguments.
            return unsafe { System.realloc(block, layout, new_size) };
        }
        // The system realloc may move the block and free the old copy unerased, so the
        // move happens here.
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        // SAFETY: GlobalAlloc::realloc requires new_size to be non-zero, and
        // from_size_align checked the rest of the layout.
        let moved = unsafe { System.alloc(new_layout) };
        if !moved.is_null() {
            // SAFETY: both blocks are at least min(old, new) bytes long and distinct.
            unsafe {
                std::ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                self.dealloc(block, layout);
            }
        }
        moved
    }
}

/// Zeroes [`STACK_BYTES`] of stack below the caller's frame, where the frames of the
/// previous connection's calls were.
#[inline(never)]
pub fn erase_stack() {
    let mut area = [0u8; STACK_BYTES];
    // SAFETY: `area` is a local array of STACK_BYTES writable bytes.
    unsafe { erase(area.as_mut_ptr(), area.len()) };
    std::hint::black_box(&area);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erase_zeroes_every_byte() {
        let mut bytes = vec![0xa5u8; 4096];
        // SAFETY: the vector owns 4096 writable bytes.
        unsafe { erase(bytes.as_mut_ptr(), bytes.len()) };
        assert!(bytes.iter().all(|&byte| byte == 0));
    }

    #[test]
    fn realloc_keeps_contents_when_enabled() {
        let allocator = ScrubbingAllocator;
        enable();
        let layout = Layout::from_size_align(16, 8).unwrap();
        // SAFETY: the block is allocated, written, grown and freed with matching layouts.
        unsafe {
            let block = allocator.alloc(layout);
            assert!(!block.is_null());
            for offset in 0..16 {
                block.add(offset).write(offset as u8);
            }
            let grown = allocator.realloc(block, layout, 64);
            assert!(!grown.is_null());
            for offset in 0..16 {
                assert_eq!(grown.add(offset).read(), offset as u8);
            }
            allocator.dealloc(grown, Layout::from_size_align(64, 8).unwrap());
        }
    }
}
