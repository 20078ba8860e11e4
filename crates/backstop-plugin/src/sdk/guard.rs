//! Panics never unwind out of an export: every export runs its body under
//! `catch_unwind` and turns a panic into a message for the host.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Runs `f`, catching a panic as its message.
pub(crate) fn guard<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(panic_message)
}

/// The text of a panic payload. Drops the payload without letting a panic
/// in its destructor escape.
pub(crate) fn panic_message(payload: Box<dyn Any + Send>) -> String {
    let message = if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic with a payload that is not text".to_owned()
    };
    if let Err(second) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        // A payload whose destructor panics again is leaked rather than
        // risk a third panic.
        std::mem::forget(second);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message() {
        assert_eq!(guard(|| 7), Ok(7));
        let formatted = guard(|| -> u32 { panic!("bad {}", 42) });
        assert_eq!(formatted, Err("bad 42".to_owned()));
        let literal = guard(|| -> u32 { panic!("plain") });
        assert_eq!(literal, Err("plain".to_owned()));
        let other = guard(|| -> u32 { std::panic::panic_any(5_u8) });
        assert_eq!(
            other,
            Err("a panic with a payload that is not text".to_owned())
        );
    }
}
