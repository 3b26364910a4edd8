//! Allocator settings for Hone's binaries.
//!
//! Tensor work allocates and frees many large buffers per step. glibc malloc hands each one back to
//! the kernel, which must zero fresh pages on the next allocation: measured here, page clearing took
//! ~20% of a forward pass. mimalloc with purging disabled keeps freed memory for reuse instead; the
//! process's footprint stays at its peak, which is what matters for fitting in memory anyway.
//! Binaries install it with `#[global_allocator] static A: hone::alloc::MiMalloc = hone::alloc::MiMalloc;`
//! and call [`configure`] first thing in `main`.

pub use mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (the Rust bindings name no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never return freed memory to the OS (purge delay −1).
pub fn configure() {
    // SAFETY: setting an option is a plain store in mimalloc's option table.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}
