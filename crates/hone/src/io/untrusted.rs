//! Third-party readers run over untrusted files, with their panics turned into errors.
//!
//! A few parsers Hone uses assert on some malformed input instead of returning their errors (found
//! by fuzzing: arrow-ipc 58 slices past the end of a buffer whose length the file declares). Such a
//! reader runs under [`catching_panics`]: its panic becomes an error naming the file, and the
//! process's panic hook is not told of it (the error says it, on one line). A panic anywhere else
//! reaches the hook as before — including a fuzzer's, which aborts on every panic it is told of.

use std::cell::Cell;
use std::fmt::Display;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use anyhow::{anyhow, Result};

thread_local! {
    /// How many [`catching_panics`] calls this thread is inside.
    static CATCHING: Cell<usize> = const { Cell::new(0) };
}

/// Runs `read`; a panic inside it becomes the error `{what}: {the panic's message}`.
pub fn catching_panics<T>(what: impl Display, read: impl FnOnce() -> Result<T>) -> Result<T> {
    install_hook();
    CATCHING.with(|depth| depth.set(depth.get() + 1));
    let outcome = panic::catch_unwind(AssertUnwindSafe(read));
    CATCHING.with(|depth| depth.set(depth.get() - 1));
    outcome.unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("the reader failed");
        Err(anyhow!("{what}: {message}"))
    })
}

/// Wraps the panic hook in place when first needed (after a fuzzer's own is set) so that it skips
/// panics [`catching_panics`] turns into errors.
fn install_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if CATCHING.with(Cell::get) == 0 {
                previous(info);
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_is_an_error_and_the_rest_is_unchanged() {
        let err = catching_panics("f.arrow", || -> Result<()> { panic!("offset 9 > 4") });
        assert_eq!(err.unwrap_err().to_string(), "f.arrow: offset 9 > 4");
        let ok = catching_panics("f.arrow", || Ok(7));
        assert_eq!(ok.unwrap(), 7);
        let inner = catching_panics("f.arrow", || -> Result<()> { Err(anyhow!("bad")) });
        assert_eq!(inner.unwrap_err().to_string(), "bad");
        assert_eq!(CATCHING.with(Cell::get), 0);
    }
}
