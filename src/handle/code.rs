//! [`Code`]: the text of a request (Lua source, or a global function's name) on its way to the
//! isle's thread.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// Lua source code, or the name of a global function, as a request takes it.
///
/// The request methods ([`Isle::eval`](crate::Isle::eval), [`Isle::call`](crate::Isle::call),
/// their `spawn_` and async forms, coroutine requests) accept anything that converts into a
/// `Code`: a `&str` of any lifetime (a line a user typed, `format!(..).as_str()`), a `&String`,
/// a `String`, a `Box<str>`, an `Arc<str>` or a `Cow<'_, str>`. The text has to reach another
/// thread and may outlive the call (a request can be left running), so a borrowed string is
/// copied once:
///
/// - up to [`Code::INLINE`] bytes, into the `Code` itself, without allocating: most string
///   literals passed to `eval` and every realistic function name cost no allocation;
/// - longer, into one allocation. [`Code::from_static`] avoids even that for a long
///   `&'static str`.
///
/// An owned `String` or `Box<str>` is moved in and an `Arc<str>` shared, never copied: hand
/// over an `Arc<str>` to send the same long script many times without copying it.
///
/// However it is given, the isle compiles a piece of code once and caches it (see
/// [`IsleBuilder::chunk_cache`](crate::IsleBuilder::chunk_cache)).
///
/// # Examples
///
/// ```
/// use std::borrow::Cow;
/// use std::sync::Arc;
/// use mlua_isle::{Code, Isle};
///
/// let isle = Isle::spawn(|lua| lua.load("function add(a, b) return a + b end").exec())?;
///
/// // A borrowed line, however short-lived.
/// let line = String::from("return 20 + 1");
/// assert_eq!(isle.eval::<i64>(line.as_str())?, 21);
/// assert_eq!(isle.eval::<i64>(format!("return {} * 2", 21).as_str())?, 42);
///
/// // Owned and shared strings, moved in.
/// let name = String::from("add");
/// assert_eq!(isle.call::<i64>(name, (1, 2))?, 3);
/// let script: Arc<str> = Arc::from("return 'shared'");
/// assert_eq!(isle.eval::<String>(script.clone())?, "shared");
/// assert_eq!(isle.eval::<i64>(Cow::Borrowed(line.as_str()))?, 21);
///
/// // A long literal without a copy.
/// const LONG: &str = "local t = {} for i = 1, 10 do t[i] = i * i end return #t, t[10]";
/// assert_eq!(isle.eval::<(i64, i64)>(Code::from_static(LONG))?, (10, 100));
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
#[derive(Clone)]
pub struct Code(Repr);

#[derive(Clone)]
enum Repr {
    /// A `&'static str` from [`Code::from_static`], not copied.
    Static(&'static str),
    /// A short borrowed `&str`, copied into the first `len` bytes.
    Inline { len: u8, bytes: [u8; Code::INLINE] },
    /// An owned string, moved in (or a long borrowed `&str`, copied).
    Owned(String),
    /// A shared string.
    Shared(Arc<str>),
}

impl Code {
    /// The longest borrowed `&str` a `Code` holds without allocating, in bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// // Typical expressions and function names are shorter.
    /// assert!("return 1 + 1".len() <= mlua_isle::Code::INLINE);
    /// ```
    pub const INLINE: usize = 62;

    /// Code from a `&'static str`, never copied, however long.
    ///
    /// Converting a `&str` with [`From`] copies it (a `&'static str` cannot be told apart from
    /// a shorter-lived one); this does not. Only long texts gain from it: short ones are
    /// copied without allocating anyway.
    ///
    /// # Examples
    ///
    /// ```
    /// use mlua_isle::{Code, Isle};
    ///
    /// const SCRIPT: Code = Code::from_static("return ('ab'):rep(3)");
    /// let isle = Isle::spawn(|_| Ok(()))?;
    /// assert_eq!(isle.eval::<String>(SCRIPT)?, "ababab");
    /// # Ok::<(), mlua_isle::IsleError>(())
    /// ```
    pub const fn from_static(text: &'static str) -> Code {
        Code(Repr::Static(text))
    }

    /// The text.
    ///
    /// # Examples
    ///
    /// ```
    /// let code = mlua_isle::Code::from(format!("return {}", 1).as_str());
    /// assert_eq!(code.as_str(), "return 1");
    /// ```
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Static(text) => text,
            Repr::Inline { len, bytes } => match std::str::from_utf8(&bytes[..usize::from(*len)]) {
                Ok(text) => text,
                Err(_) => unreachable!("copied whole from a `str`"),
            },
            Repr::Owned(text) => text,
            Repr::Shared(text) => text,
        }
    }
}

/// Copies `text`: into the `Code` itself if it is short, otherwise into an allocation.
impl From<&str> for Code {
    fn from(text: &str) -> Self {
        let len = text.len();
        if len <= Code::INLINE {
            let mut bytes = [0; Code::INLINE];
            bytes[..len].copy_from_slice(text.as_bytes());
            Code(Repr::Inline {
                len: len as u8,
                bytes,
            })
        } else {
            Code(Repr::Owned(text.to_owned()))
        }
    }
}

/// Copies `text`, as `From<&str>` does.
impl From<&String> for Code {
    fn from(text: &String) -> Self {
        Code::from(text.as_str())
    }
}

/// Moves `text` in, without copying it.
impl From<String> for Code {
    fn from(text: String) -> Self {
        Code(Repr::Owned(text))
    }
}

/// Moves `text` in, without copying it.
impl From<Box<str>> for Code {
    fn from(text: Box<str>) -> Self {
        Code(Repr::Owned(text.into_string()))
    }
}

/// Shares `text`, without copying it.
impl From<Arc<str>> for Code {
    fn from(text: Arc<str>) -> Self {
        Code(Repr::Shared(text))
    }
}

/// Shares `text`, without copying it.
impl From<&Arc<str>> for Code {
    fn from(text: &Arc<str>) -> Self {
        Code(Repr::Shared(text.clone()))
    }
}

/// Copies a borrowed `text` (as `From<&str>` does), moves an owned one in.
impl From<Cow<'_, str>> for Code {
    fn from(text: Cow<'_, str>) -> Self {
        match text {
            Cow::Borrowed(text) => Code::from(text),
            Cow::Owned(text) => Code::from(text),
        }
    }
}

/// Clones `code` (sharing or copying its text as [`Clone`] does).
impl From<&Code> for Code {
    fn from(code: &Code) -> Self {
        code.clone()
    }
}

impl Deref for Code {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Code {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Code").field(&self.as_str()).finish()
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_inline(code: &Code) -> bool {
        matches!(code.0, Repr::Inline { .. })
    }

    #[test]
    fn short_borrowed_text_is_copied_without_allocating() {
        let line = String::from("return 1 + 1");
        let code = Code::from(line.as_str());
        assert!(is_inline(&code));
        assert_eq!(code.as_str(), "return 1 + 1");
        assert!(is_inline(&Code::from("")));
        assert!(is_inline(&Code::from("x".repeat(Code::INLINE).as_str())));
    }

    #[test]
    fn long_borrowed_text_is_copied_once() {
        let long = "x".repeat(Code::INLINE + 1);
        let code = Code::from(long.as_str());
        assert!(matches!(code.0, Repr::Owned(_)));
        assert_eq!(code.as_str(), long);
    }

    #[test]
    fn multibyte_text_at_the_inline_limit_survives() {
        // Two-byte characters filling the inline space exactly, and one byte over.
        for text in [
            "é".repeat(Code::INLINE / 2),
            format!("a{}", "é".repeat(Code::INLINE / 2)),
        ] {
            assert_eq!(Code::from(text.as_str()).as_str(), text);
            assert_eq!(Code::from(Cow::Borrowed(text.as_str())).as_str(), text);
        }
    }

    #[test]
    fn owned_and_shared_text_is_not_copied() {
        let text = String::from("return 1");
        let address = text.as_ptr();
        assert_eq!(Code::from(text).as_str().as_ptr(), address);

        let boxed: Box<str> = "return 2".into();
        let address = boxed.as_ptr();
        assert_eq!(Code::from(boxed).as_str().as_ptr(), address);

        let shared: Arc<str> = Arc::from("return 3");
        assert_eq!(Code::from(&shared).as_str().as_ptr(), shared.as_ptr());
        assert_eq!(
            Code::from(shared.clone()).as_str().as_ptr(),
            shared.as_ptr()
        );

        let owned: Cow<'_, str> = Cow::Owned(String::from("return 4"));
        let address = owned.as_ptr();
        assert_eq!(Code::from(owned).as_str().as_ptr(), address);

        const LONG: &str = "a long literal, longer than what a `Code` holds inline, never copied";
        assert!(LONG.len() > Code::INLINE);
        assert_eq!(Code::from_static(LONG).as_str().as_ptr(), LONG.as_ptr());
    }

    #[test]
    fn code_is_small_send_and_sync() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<Code>();
        assert!(std::mem::size_of::<Code>() <= 64);
    }

    #[test]
    fn debug_and_display_show_the_text() {
        let code = Code::from("return 1");
        assert_eq!(format!("{code:?}"), "Code(\"return 1\")");
        assert_eq!(code.to_string(), "return 1");
    }
}
