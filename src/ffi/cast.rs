//! The only place where raw pointers from C become references, strings,
//! slices or owned handles. The rules each helper relies on are the ones
//! `include/tribe.h` states for every function: pointers are NULL or point to
//! live objects of the right type made by libtribe, strings are
//! NUL-terminated, and buffers hold at least the given length.

use std::ffi::{c_char, CStr, CString};

use super::error::{FfiError, TRIBE_INVALID_UTF8};

/// Boxes a value into a handle owned by C.
pub(super) fn into_handle<T>(value: T) -> *mut T {
    Box::into_raw(Box::new(value))
}

/// Frees a handle made by [`into_handle`]; NULL is ignored.
pub(super) fn free_handle<T>(handle: *mut T) {
    if !handle.is_null() {
        // SAFETY: the header says a handle is freed once, by its own free
        // function, and only handles made by `into_handle` reach here.
        drop(unsafe { Box::from_raw(handle) });
    }
}

/// Frees a handle unless it was made in another process (a forked child
/// sees its parent's handles, whose threads do not exist there: freeing
/// would wait for them forever, so they are left to the process's exit).
pub(super) fn free_owned_handle<T>(handle: *mut T, owner: impl Fn(&T) -> &super::owner::Owner) {
    if opt_ref(handle).is_some_and(|h| owner(h).is_elsewhere()) {
        return;
    }
    free_handle(handle)
}

/// A shared reference to a handle, or `None` for NULL.
pub(super) fn opt_ref<'a, T>(handle: *const T) -> Option<&'a T> {
    // SAFETY: non-NULL handles point to a live object made by libtribe
    // (header rule); the reference does not outlive the exported call.
    unsafe { handle.as_ref() }
}

/// A string borrowed from a handle for C (NULL for a NULL handle), behind
/// the panic boundary.
pub(super) fn field_str<T>(handle: *const T, field: impl Fn(&T) -> &CStr) -> *const c_char {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        opt_ref(handle).map_or(std::ptr::null(), |h| field(h).as_ptr())
    }))
    .unwrap_or(std::ptr::null())
}

/// A shared reference to a handle; NULL is an error naming `what`.
pub(super) fn handle<'a, T>(handle: *const T, what: &str) -> Result<&'a T, FfiError> {
    opt_ref(handle).ok_or_else(|| FfiError::null(what))
}

/// An exclusive reference to a handle; NULL is an error naming `what`.
pub(super) fn handle_mut<'a, T>(handle: *mut T, what: &str) -> Result<&'a mut T, FfiError> {
    // SAFETY: as for `opt_ref`; the header says these objects are not used
    // from two threads at once, so the reference is unique for the call.
    unsafe { handle.as_mut() }.ok_or_else(|| FfiError::null(what))
}

/// A UTF-8 string argument; NULL or invalid UTF-8 is an error naming `what`.
pub(super) fn text<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, FfiError> {
    opt_text(ptr, what)?.ok_or_else(|| FfiError::null(what))
}

/// An optional UTF-8 string argument (NULL means absent).
pub(super) fn opt_text<'a>(ptr: *const c_char, what: &str) -> Result<Option<&'a str>, FfiError> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL strings are NUL-terminated and live for the call
    // (header rule).
    let c = unsafe { CStr::from_ptr(ptr) };
    c.to_str()
        .map(Some)
        .map_err(|_| FfiError::new(TRIBE_INVALID_UTF8, format!("{what} is not valid UTF-8")))
}

/// An optional string argument whose bytes that are not UTF-8 are replaced
/// (U+FFFD): for text passed on, such as a failure's code and message,
/// which is better kept with a mark than lost.
pub(super) fn opt_text_lossy<'a>(ptr: *const c_char) -> Option<std::borrow::Cow<'a, str>> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: non-NULL strings are NUL-terminated and live for the call
    // (header rule).
    Some(unsafe { CStr::from_ptr(ptr) }.to_string_lossy())
}

/// A byte buffer argument; NULL is allowed only with length 0.
pub(super) fn bytes<'a>(ptr: *const u8, len: usize, what: &str) -> Result<&'a [u8], FfiError> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(FfiError::null(what));
    }
    if len > isize::MAX as usize {
        return Err(FfiError::invalid(format!("{what} length is too large")));
    }
    // SAFETY: the buffer holds at least `len` readable bytes for the call
    // (header rule); the length was checked against isize::MAX.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// An array of `len` UTF-8 strings; NULL is allowed only with length 0,
/// and an element that is NULL or not UTF-8 is refused by its index.
pub(super) fn texts<'a>(
    ptr: *const *const c_char,
    len: usize,
    what: &str,
) -> Result<Vec<&'a str>, FfiError> {
    if len == 0 {
        return Ok(Vec::new());
    }
    if ptr.is_null() {
        return Err(FfiError::null(what));
    }
    if len > isize::MAX as usize / std::mem::size_of::<*const c_char>() {
        return Err(FfiError::invalid(format!("{what} length is too large")));
    }
    // SAFETY: the array holds `len` readable pointers for the call (header
    // rule); its size was checked against isize::MAX.
    let ptrs = unsafe { std::slice::from_raw_parts(ptr, len) };
    ptrs.iter()
        .enumerate()
        .map(|(i, p)| text(*p, &format!("{what}[{i}]")))
        .collect()
}

/// Checks that an out-parameter is not NULL before any work is done.
pub(super) fn out<T>(ptr: *mut T, what: &str) -> Result<*mut T, FfiError> {
    if ptr.is_null() {
        Err(FfiError::null(what))
    } else {
        Ok(ptr)
    }
}

/// Whether a reply is wanted through `reply`/`reply_len`: both NULL say
/// no (the outcome only, a publisher's); one NULL is an error.
pub(super) fn reply_wanted(reply: *mut *mut u8, reply_len: *mut usize) -> Result<bool, FfiError> {
    if reply.is_null() && reply_len.is_null() {
        return Ok(false);
    }
    out(reply, "reply")?;
    out(reply_len, "reply_len")?;
    Ok(true)
}

/// Writes `value` through an out-parameter already checked by [`out`].
pub(super) fn write<T>(ptr: *mut T, value: T) {
    // SAFETY: `ptr` was checked non-NULL by `out` and points to writable
    // storage for a `T` (header rule); the old value is plain data.
    unsafe { ptr.write(value) }
}

/// An out-array of `cap` slots; NULL is an error naming `what` (unless
/// `cap` is 0, which gives an empty slice).
pub(super) fn out_array<'a, T>(
    ptr: *mut T,
    cap: usize,
    what: &str,
) -> Result<&'a mut [std::mem::MaybeUninit<T>], FfiError> {
    if cap == 0 {
        return Ok(&mut []);
    }
    let ptr = out(ptr, what)?;
    if cap > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return Err(FfiError::invalid(format!("{what} capacity is too large")));
    }
    // SAFETY: the array holds `cap` writable slots for the call (header
    // rule), the size was checked against isize::MAX, and the slots are
    // only written (MaybeUninit), never read.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr.cast(), cap) })
}

/// Writes through an optional out-parameter; NULL means the caller does
/// not want the value. Only plain values: a dropped handle would leak.
pub(super) fn store<T: Copy>(ptr: *mut T, value: T) {
    if !ptr.is_null() {
        write(ptr, value);
    }
}

/// What an out-parameter holds when a call fails: NULL or 0.
pub(super) trait Blank: Copy {
    const BLANK: Self;
}

impl<T> Blank for *mut T {
    const BLANK: Self = std::ptr::null_mut();
}

impl<T> Blank for *const T {
    const BLANK: Self = std::ptr::null();
}

impl Blank for usize {
    const BLANK: Self = 0;
}

impl Blank for u64 {
    const BLANK: Self = 0;
}

impl Blank for u32 {
    const BLANK: Self = 0;
}

/// Sets an out-parameter to NULL / 0 ([`Blank`]); a NULL one is left alone
/// (the body refuses it when it is required).
pub(super) fn clear<T: Blank>(ptr: *mut T) {
    store(ptr, T::BLANK);
}

/// A C string of `s`; interior NULs (which would cut the text short in C)
/// become U+FFFD.
pub(super) fn c_text(s: &str) -> CString {
    CString::new(s.replace('\0', "\u{fffd}")).unwrap_or_default()
}

/// Hands a string to C as an owned, NUL-terminated buffer with its length
/// (without the NUL); freed by `tribe_string_free`.
pub(super) fn give_string(out: *mut *mut c_char, len: *mut usize, s: String) {
    let s = c_text(&s);
    store(len, s.as_bytes().len());
    write(out, s.into_raw());
}

/// Hands bytes to C as an owned buffer; freed by `tribe_bytes_free` with the
/// same length. An empty buffer is NULL.
pub(super) fn give_bytes(out: *mut *mut u8, len: *mut usize, bytes: Vec<u8>) {
    store(len, bytes.len());
    if bytes.is_empty() {
        write(out, std::ptr::null_mut());
    } else {
        write(out, Box::into_raw(bytes.into_boxed_slice()).cast::<u8>());
    }
}

/// Takes back a string made by [`give_string`]; NULL is ignored.
pub(super) fn free_string(ptr: *mut c_char) {
    if !ptr.is_null() {
        // SAFETY: the header says only strings returned by libtribe are
        // passed here, once; they came from `CString::into_raw`.
        drop(unsafe { CString::from_raw(ptr) });
    }
}

/// Takes back bytes made by [`give_bytes`]; NULL is ignored.
pub(super) fn free_bytes(ptr: *mut u8, len: usize) {
    if !ptr.is_null() {
        // SAFETY: the header says only buffers returned by libtribe are
        // passed here, once, with the length they came with; they came from
        // `Box<[u8]>::into_raw` of exactly that length.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)) });
    }
}
