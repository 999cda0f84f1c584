//! Borrowing: a floating seat taken for offline use (a laptop on a plane). The server keeps it
//! without heartbeats for the borrow period; the signed lease token is the product's proof,
//! checked offline. Save a [`LicensingBorrowed`] to a file, load it at each start and check it.

use crate::client::{client, LicensingClient};
use crate::floating::{checkout_arguments, LicensingCheckoutOptions};
use crate::{block_on, call, free, get, new_handle, out, put, text, Failure, LicensingStatus};
use licensing_client::borrow::BorrowedSeat;
use std::ffi::c_char;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A borrowed seat: its lease, signed token, end and the last time seen.
pub struct LicensingBorrowed {
    _opaque: [u8; 0],
}

type Borrowed = Mutex<BorrowedSeat>;

fn seat_of(handle: *const LicensingBorrowed) -> Result<Arc<Borrowed>, Failure> {
    get(handle, "borrowed")
}

/// Borrows a seat for `period_s` seconds (at most the license's `max_borrow`, never past its
/// expiry); the token is verified before it is handed out. `options` as for
/// `licensing_seat_checkout` (its callback is not used). `*out_borrowed` is freed with
/// [`licensing_borrowed_free`]; save it with [`licensing_borrowed_save`] to use it offline.
///
/// # Safety
/// As `licensing_seat_checkout`; `out_borrowed` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_borrow(
    client_handle: *const LicensingClient,
    key_or_id: *const c_char,
    password: *const c_char,
    options: *const LicensingCheckoutOptions,
    period_s: u32,
    out_borrowed: *mut *mut LicensingBorrowed,
) -> LicensingStatus {
    call(|| {
        let out_borrowed = out(out_borrowed, "out_borrowed")?;
        // The same options as a checkout's; a borrow has no state to report, so no callback.
        // SAFETY: the caller's contract.
        let c = unsafe { checkout_arguments(client_handle, key_or_id, password, options) }?;
        let seat = block_on(c.client.borrow(c.credentials, c.options, Duration::from_secs(period_s.into())))?;
        // SAFETY: checked by `out`.
        unsafe { put(out_borrowed, new_handle(Arc::new(Mutex::new(seat)))) };
        Ok(())
    })
}

/// Writes a borrowed seat to `path` (through a temporary file and a rename).
///
/// # Safety
/// `path` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn licensing_borrowed_save(
    borrowed: *const LicensingBorrowed,
    path: *const c_char,
) -> LicensingStatus {
    call(|| {
        let seat = seat_of(borrowed)?;
        // SAFETY: the caller's contract.
        let path = unsafe { text(path, "path") }?;
        let seat = seat.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(seat.save(std::path::Path::new(path))?)
    })
}

/// Reads a borrowed seat saved at `path`. Fails with `LICENSING_STATUS_STORAGE` when there is
/// none or it cannot be read. `*out_borrowed` is freed with [`licensing_borrowed_free`].
///
/// # Safety
/// `path` is a NUL-terminated string; `out_borrowed` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_borrowed_load(
    path: *const c_char,
    out_borrowed: *mut *mut LicensingBorrowed,
) -> LicensingStatus {
    call(|| {
        let out_borrowed = out(out_borrowed, "out_borrowed")?;
        // SAFETY: the caller's contract.
        let path = unsafe { text(path, "path") }?;
        let seat = BorrowedSeat::load(std::path::Path::new(path))?
            .ok_or_else(|| Failure::new(LicensingStatus::Storage, "STORAGE", format!("{path}: no borrowed seat")))?;
        // SAFETY: checked by `out`.
        unsafe { put(out_borrowed, new_handle(Arc::new(Mutex::new(seat)))) };
        Ok(())
    })
}

/// Checks a borrowed seat offline: the token's signature with the client's public key, that it
/// is a borrow of this lease, that its period has not ended (`LICENSING_STATUS_EXPIRED`,
/// `BORROW_ENDED`) and that the clock was not set back. `*out_expires_at_ms` (NULL: not wanted)
/// is the borrow's end. Moves the last-seen time forward: save the seat afterwards.
///
/// # Safety
/// `out_expires_at_ms` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_borrowed_check(
    client_handle: *const LicensingClient,
    borrowed: *const LicensingBorrowed,
    out_expires_at_ms: *mut i64,
) -> LicensingStatus {
    call(|| {
        let client = client(client_handle)?;
        let seat = seat_of(borrowed)?;
        let token = client.check_borrowed(&mut seat.lock().unwrap_or_else(|p| p.into_inner()))?;
        if !out_expires_at_ms.is_null() {
            // SAFETY: the caller's contract.
            unsafe { put(out_expires_at_ms, token.expires_at_ms) };
        }
        Ok(())
    })
}

/// Returns a borrowed seat early, freeing it on the server at once: `*out_released` (NULL: not
/// wanted) is false when the borrow had ended already.
///
/// # Safety
/// `out_released` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_borrowed_return(
    client_handle: *const LicensingClient,
    borrowed: *const LicensingBorrowed,
    out_released: *mut bool,
) -> LicensingStatus {
    call(|| {
        let client = client(client_handle)?;
        let seat = seat_of(borrowed)?.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let released = block_on(client.return_borrowed(&seat))?;
        if !out_released.is_null() {
            // SAFETY: the caller's contract.
            unsafe { put(out_released, released) };
        }
        Ok(())
    })
}

/// Frees a borrowed seat's handle (the seat stays borrowed on the server). NULL is allowed.
#[no_mangle]
pub extern "C" fn licensing_borrowed_free(borrowed: *mut LicensingBorrowed) {
    free::<_, Borrowed>(borrowed, "borrowed", drop);
}
