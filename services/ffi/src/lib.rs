//! The licensing client library ([`licensing_client`]) behind a C ABI, for products written in C,
//! C++, Python (ctypes) and any language with a C foreign-function interface.
//!
//! # Conventions of every function
//! - It returns a [`LicensingStatus`]; on failure the calling thread's last error
//!   ([`licensing_last_error_message`], [`licensing_last_error_reason`]) says why, with a stable
//!   reason (the server's, e.g. `NO_SEAT_AVAILABLE`, or one of this library's, e.g.
//!   `NULL_ARGUMENT`). A panic never crosses the boundary: it becomes [`LicensingStatus::Internal`].
//! - Strings passed in are NUL-terminated UTF-8 and stay the caller's. Strings returned through a
//!   `char **` are the caller's too: free each with [`licensing_string_free`].
//! - Handles (`LicensingClient *`, `LicensingSeat *`, ...) are opaque numbers, not pointers to
//!   memory: every call looks them up, so a handle used after its `_free` is reported as
//!   `INVALID_HANDLE` instead of touching freed memory, and any thread may use any handle.
//! - Network calls block the calling thread; the library runs its own async runtime (two worker
//!   threads), which also heartbeats floating seats in the background.
//!
//! The modules hold the functions by area: [`client`], [`node_locked`], [`floating`],
//! [`borrow`] and [`metering`]; `include/licensing.h` is generated from them by cbindgen.

// This crate is the C ABI: its exported functions read raw pointers handed over by C callers,
// which takes `unsafe` (the rest of the workspace has none). Every such function is an
// `unsafe extern "C" fn` whose `# Safety` section says what the caller must guarantee.
#![allow(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod borrow;
pub mod client;
pub mod floating;
pub mod metering;
pub mod node_locked;

use licensing_client::ClientError;
use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, CStr, CString};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

/// What a call returned. `LICENSING_STATUS_OK` is 0; any other value is a failure, described by
/// the thread's last error.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LicensingStatus {
    /// The call succeeded.
    Ok = 0,
    /// An argument was NULL where a value is required, not UTF-8, or not a usable setting
    /// (reasons `NULL_ARGUMENT`, `INVALID_UTF8`, `INVALID_ARGUMENT`, `CONFIG`), or a meter the
    /// certificate does not have (`METER_NOT_FOUND`).
    InvalidArgument = 1,
    /// A handle that was freed, or is not of the kind the function takes (`INVALID_HANDLE`).
    InvalidHandle = 2,
    /// The server could not be reached and nothing offline could stand in (`UNREACHABLE`).
    Unreachable = 3,
    /// The server refused; the reason is the server's (e.g. `NO_SEAT_AVAILABLE`,
    /// `LICENSE_NOT_FOUND`, `ACTIVATION_LIMIT_REACHED`, `METER_LIMIT_REACHED`).
    Server = 4,
    /// The server said the license is not valid here; the reason is its validation code
    /// (e.g. `VALIDATION_CODE_MODULE_NOT_LICENSED`), the message its explanation.
    NotValid = 5,
    /// No certificate is stored for offline use: activate while online first (`NO_CERTIFICATE`).
    NoCertificate = 6,
    /// The certificate or lease token does not verify with the embedded public key (a wrong
    /// public key, or a file altered): `BAD_CERTIFICATE`, `BAD_LEASE_TOKEN`.
    BadSignature = 7,
    /// The offline period (`valid_until`) or a borrow ended: `OFFLINE_PERIOD_OVER`, `BORROW_ENDED`.
    Expired = 8,
    /// The system clock was set back behind what the product has seen (`CLOCK_SET_BACK`).
    ClockSetBack = 9,
    /// This machine does not match the certificate's fingerprint (`FINGERPRINT_MISMATCH`).
    FingerprintMismatch = 10,
    /// A module asked for is not licensed (`MODULE_NOT_LICENSED`, offline).
    ModuleNotLicensed = 11,
    /// The trusted-storage or borrow file could not be read or written (`STORAGE`).
    Storage = 12,
    /// A wait ended without a seat (`TIMEOUT`, or the server's `WAIT_TIMED_OUT`).
    Timeout = 13,
    /// A wait was cancelled through its `LicensingCancel` (`CANCELLED`).
    Cancelled = 14,
    /// A bug in the library (a caught panic): `INTERNAL`.
    Internal = 15,
}

/// A failure on its way to the thread's last error.
#[derive(Debug)]
pub(crate) struct Failure {
    status: LicensingStatus,
    reason: String,
    message: String,
}

impl Failure {
    pub(crate) fn new(status: LicensingStatus, reason: &str, message: impl Into<String>) -> Self {
        Self { status, reason: reason.to_owned(), message: message.into() }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(LicensingStatus::InvalidArgument, "INVALID_ARGUMENT", message)
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        use LicensingStatus as S;
        let message = e.to_string();
        let (status, reason) = match &e {
            ClientError::Config(_) => (S::InvalidArgument, "CONFIG".to_owned()),
            ClientError::Server { reason, .. } if reason == "WAIT_TIMED_OUT" => (S::Timeout, reason.clone()),
            ClientError::Server { code, reason, .. } => {
                (S::Server, if reason.is_empty() { format!("{code:?}").to_uppercase() } else { reason.clone() })
            }
            ClientError::Unreachable(_) => (S::Unreachable, "UNREACHABLE".into()),
            ClientError::NoCertificate => (S::NoCertificate, "NO_CERTIFICATE".into()),
            ClientError::DeactivatedOffline => (S::NoCertificate, "DEACTIVATED_OFFLINE".into()),
            ClientError::BadCertificate(_) => (S::BadSignature, "BAD_CERTIFICATE".into()),
            ClientError::OfflinePeriodOver(_) => (S::Expired, "OFFLINE_PERIOD_OVER".into()),
            ClientError::ClockSetBack { .. } => (S::ClockSetBack, "CLOCK_SET_BACK".into()),
            ClientError::FingerprintMismatch => (S::FingerprintMismatch, "FINGERPRINT_MISMATCH".into()),
            ClientError::ModuleNotLicensed(_) | ClientError::ModuleExpired { .. } => {
                (S::ModuleNotLicensed, "MODULE_NOT_LICENSED".into())
            }
            ClientError::Storage(_) => (S::Storage, "STORAGE".into()),
            ClientError::BorrowEnded(_) => (S::Expired, "BORROW_ENDED".into()),
            ClientError::BadLeaseToken(_) => (S::BadSignature, "BAD_LEASE_TOKEN".into()),
        };
        Self { status, reason, message }
    }
}

pub(crate) type Outcome = Result<(), Failure>;

thread_local! {
    /// The last failure on this thread: message and reason, NUL-terminated for C.
    static LAST_ERROR: RefCell<(CString, CString)> = RefCell::new((CString::default(), CString::default()));
}

fn c_string(text: &str) -> CString {
    CString::new(text.replace('\0', "\u{FFFD}")).expect("no NUL left")
}

fn set_last_error(message: &str, reason: &str) {
    LAST_ERROR.with(|last| *last.borrow_mut() = (c_string(message), c_string(reason)));
}

/// Runs the body of an exported function: clears the last error, catches a panic, and turns a
/// failure into its status and the thread's last error.
pub(crate) fn call(body: impl FnOnce() -> Outcome) -> LicensingStatus {
    set_last_error("", "");
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => LicensingStatus::Ok,
        Ok(Err(failure)) => {
            set_last_error(&failure.message, &failure.reason);
            failure.status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            set_last_error(&format!("internal error in the licensing library: {what}"), "INTERNAL");
            LicensingStatus::Internal
        }
    }
}

/// The message of the last failure on the calling thread, or `""` after a call that succeeded.
///
/// The string is the library's: do not free it. It stays valid until the next `licensing_*`
/// call on the same thread.
#[no_mangle]
pub extern "C" fn licensing_last_error_message() -> *const c_char {
    LAST_ERROR.with(|last| last.borrow().0.as_ptr())
}

/// The stable reason of the last failure on the calling thread (e.g. `NO_SEAT_AVAILABLE`,
/// `NULL_ARGUMENT`, `UNREACHABLE`), or `""` after a call that succeeded.
///
/// The string is the library's: do not free it. It stays valid until the next `licensing_*`
/// call on the same thread.
#[no_mangle]
pub extern "C" fn licensing_last_error_reason() -> *const c_char {
    LAST_ERROR.with(|last| last.borrow().1.as_ptr())
}

/// The library's version (`"0.1.0"`). The string is static: do not free it.
#[no_mangle]
pub extern "C" fn licensing_version() -> *const c_char {
    static VERSION: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(v) => v,
        Err(_) => panic!("the version has no NUL"),
    };
    VERSION.as_ptr()
}

/// Frees a string the library returned through a `char **`. NULL is allowed and does nothing.
///
/// # Safety
/// `text` is NULL or a string this library returned and that was not freed yet.
#[no_mangle]
pub unsafe extern "C" fn licensing_string_free(text: *mut c_char) {
    if !text.is_null() {
        // SAFETY: the caller hands back a string made by `CString::into_raw` in `put_string`.
        drop(unsafe { CString::from_raw(text) });
    }
}

/// A string argument: NULL and invalid UTF-8 are failures naming `name`.
///
/// # Safety
/// `text` is NULL or a NUL-terminated string that lives for `'a`.
pub(crate) unsafe fn text<'a>(text: *const c_char, name: &str) -> Result<&'a str, Failure> {
    if text.is_null() {
        return Err(Failure::new(LicensingStatus::InvalidArgument, "NULL_ARGUMENT", format!("`{name}` is NULL")));
    }
    // SAFETY: not NULL, and NUL-terminated by the caller's contract.
    unsafe { CStr::from_ptr(text) }.to_str().map_err(|_| {
        Failure::new(LicensingStatus::InvalidArgument, "INVALID_UTF8", format!("`{name}` is not valid UTF-8"))
    })
}

/// An optional string argument: NULL is `None`.
///
/// # Safety
/// As [`text`].
pub(crate) unsafe fn optional_text<'a>(value: *const c_char, name: &str) -> Result<Option<&'a str>, Failure> {
    if value.is_null() {
        Ok(None)
    } else {
        // SAFETY: the caller's contract.
        unsafe { text(value, name) }.map(Some)
    }
}

/// Checks an out-pointer before any work is done.
pub(crate) fn out<T>(pointer: *mut T, name: &str) -> Result<*mut T, Failure> {
    if pointer.is_null() {
        Err(Failure::new(LicensingStatus::InvalidArgument, "NULL_ARGUMENT", format!("`{name}` is NULL")))
    } else {
        Ok(pointer)
    }
}

/// Writes a value through an out-pointer checked by [`out`].
///
/// # Safety
/// `pointer` is valid for a write of `T`.
pub(crate) unsafe fn put<T>(pointer: *mut T, value: T) {
    // SAFETY: the caller's contract; `out` checked it is not NULL.
    unsafe { pointer.write(value) }
}

/// Writes a new string the caller frees with [`licensing_string_free`].
///
/// # Safety
/// `pointer` is valid for a write of a `char *`.
pub(crate) unsafe fn put_string(pointer: *mut *mut c_char, value: &str) {
    // SAFETY: the caller's contract.
    unsafe { put(pointer, c_string(value).into_raw()) }
}

/// The live handles: a handle is a number, never dereferenced, that maps to its object here.
static HANDLES: LazyLock<Mutex<HashMap<usize, Arc<dyn Any + Send + Sync>>>> = LazyLock::new(Default::default);
static NEXT_HANDLE: AtomicUsize = AtomicUsize::new(1);

fn handles() -> std::sync::MutexGuard<'static, HashMap<usize, Arc<dyn Any + Send + Sync>>> {
    // A panic while the lock was held cannot leave the map half-changed: use it anyway.
    HANDLES.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Registers an object and returns its handle (never NULL, never reused).
pub(crate) fn new_handle<H, T: Send + Sync + 'static>(object: Arc<T>) -> *mut H {
    // Multiples of 16 that look like aligned pointers, for debuggers and C code that checks.
    let id = NEXT_HANDLE.fetch_add(1, Ordering::Relaxed) << 4;
    handles().insert(id, object);
    id as *mut H
}

fn kind_failure(name: &str) -> Failure {
    Failure::new(
        LicensingStatus::InvalidHandle,
        "INVALID_HANDLE",
        format!("`{name}` is not a live handle of its kind (freed already, or another kind)"),
    )
}

/// The object behind a handle, kept alive for the call even if another thread frees it.
pub(crate) fn get<H, T: Send + Sync + 'static>(handle: *const H, name: &str) -> Result<Arc<T>, Failure> {
    if handle.is_null() {
        return Err(Failure::new(LicensingStatus::InvalidArgument, "NULL_ARGUMENT", format!("`{name}` is NULL")));
    }
    let object = handles().get(&(handle as usize)).cloned().ok_or_else(|| kind_failure(name))?;
    object.downcast::<T>().map_err(|_| kind_failure(name))
}

/// Removes a handle; `None` when it is NULL, unknown or of another kind (then it stays).
pub(crate) fn take<H, T: Send + Sync + 'static>(handle: *const H) -> Option<Arc<T>> {
    let mut map = handles();
    let id = handle as usize;
    if !map.get(&id)?.is::<T>() {
        return None;
    }
    map.remove(&id)?.downcast::<T>().ok()
}

/// A `_free` function's body: unknown handles are reported through the last error, not a crash.
pub(crate) fn free<H, T: Send + Sync + 'static>(handle: *const H, name: &str, then: impl FnOnce(Arc<T>)) {
    if handle.is_null() {
        set_last_error("", "");
        return;
    }
    let status = call(|| {
        let object = take::<H, T>(handle).ok_or_else(|| kind_failure(name))?;
        then(object);
        Ok(())
    });
    let _ = status;
}

/// The library's async runtime, started on first use and kept for the life of the process.
/// Its threads, which do all the library's network I/O, block SIGPIPE (see
/// [`block_sigpipe_on_this_thread`]).
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("licensing")
            .on_thread_start(block_sigpipe_on_this_thread)
            .enable_all()
            .build()
            .expect("the licensing library's runtime starts")
    })
}

/// A Rust program ignores SIGPIPE; a C, C++ or Python product usually does not, so a write to a
/// connection the peer has closed (a server that refuses the product's TLS client certificate
/// closes it during the handshake) would kill the product with SIGPIPE instead of failing the
/// call with `UNREACHABLE`. Blocking the signal on the library's own threads makes such a write
/// fail with `EPIPE` while leaving the product's handling of SIGPIPE as it was.
fn block_sigpipe_on_this_thread() {
    #[cfg(unix)]
    // SAFETY: the set is a local that `sigemptyset` initialises; `pthread_sigmask` changes only
    // the calling thread's mask, which is one of the library's own threads.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Runs a future to completion on the library's runtime, blocking the calling thread. A caller
/// already inside an async runtime (a Rust product, or a callback) gets a helper thread.
pub(crate) fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|scope| {
            scope.spawn(|| runtime().block_on(future)).join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    } else {
        runtime().block_on(future)
    }
}

/// The credentials of the `key_or_id` and `password` arguments: a license key when `password`
/// is NULL, else a License ID and its activation password.
///
/// # Safety
/// Both are NULL or NUL-terminated strings.
pub(crate) unsafe fn credentials(
    key_or_id: *const c_char,
    password: *const c_char,
) -> Result<licensing_client::Credentials, Failure> {
    // SAFETY: the caller's contract.
    let key_or_id = unsafe { text(key_or_id, "key_or_id") }?.to_owned();
    // SAFETY: the caller's contract.
    Ok(match unsafe { optional_text(password, "password") }? {
        None => licensing_client::Credentials::LicenseKey(key_or_id),
        Some(password) => {
            licensing_client::Credentials::IdAndPassword { license_id: key_or_id, password: password.to_owned() }
        }
    })
}
