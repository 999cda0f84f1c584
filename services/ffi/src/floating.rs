//! Floating seats: a [`LicensingSeat`] holds a lease while it lives. The library heartbeats it
//! in the background on the interval the server grants, retries through network faults, and
//! checks out again when the server lost the lease; the product learns the seat's state from
//! [`licensing_seat_state`] or a [`LicensingSeatCallback`]. Freeing the seat checks it in.

use crate::client::{client, LicensingClient};
use crate::{
    block_on, call, credentials, free, get, new_handle, optional_text, out, put, put_string, runtime, Failure,
    LicensingStatus,
};
use licensing_client::floating::{CheckoutOptions, SeatGuard, SeatState};
use licensing_client::{Client, Credentials};
use std::ffi::{c_char, c_void, CString};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// A floating seat held by this process.
pub struct LicensingSeat {
    _opaque: [u8; 0],
}

/// Cancels a [`licensing_seat_wait`] from another thread.
pub struct LicensingCancel {
    _opaque: [u8; 0],
}

/// A seat's state.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LicensingSeatState {
    /// The lease is held and heartbeats succeed.
    Held = 0,
    /// The server is unreachable; the library keeps trying while the last lease runs out.
    Reconnecting = 1,
    /// The seat is gone for good (revoked, license suspended, no seat free on re-checkout): the
    /// reason says why. The product should stop the licensed work.
    Lost = 2,
    /// The product checked the seat in.
    Released = 3,
}

/// Called on a library thread when a seat's state changes (and once with the state at checkout):
/// `reason` is the server's reason when `state` is `LOST` (e.g. `LEASE_REVOKED`), else `""`; it
/// is the library's and valid only during the call. The callback may call any `licensing_*`
/// function, including [`licensing_seat_free`] of its own seat.
pub type LicensingSeatCallback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, state: LicensingSeatState, reason: *const c_char)>;

/// How to check a seat out. All-zero (`LicensingCheckoutOptions o = {0};`) or a NULL pointer
/// means the defaults.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LicensingCheckoutOptions {
    /// The feature the seat is for (NULL: the license's seats).
    pub feature: *const c_char,
    /// The user the seat is for (NULL: the operating system's user running the process).
    pub user: *const c_char,
    /// The machine the seat is for (NULL: the operating system's host name).
    pub host: *const c_char,
    /// Stable for this process (NULL: made up once per checkout). Checking out again with the
    /// same one renews instead of taking a second seat.
    pub client_instance_id: *const c_char,
    /// The lease's requested time to live in milliseconds (0: 60000); the server bounds it.
    pub ttl_ms: u32,
    /// Told of state changes, on a library thread (NULL: none).
    pub callback: LicensingSeatCallback,
    /// Passed to `callback` as is; it must stay usable from another thread until the seat is
    /// freed.
    pub user_data: *mut c_void,
}

/// The C caller's `user_data`, which its contract lets another thread use.
struct UserData(*mut c_void);
// SAFETY: the caller promises `user_data` may be used from the library's callback thread.
unsafe impl Send for UserData {}

struct Notifier {
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

struct Seat {
    guard: Mutex<Option<SeatGuard>>,
    state: watch::Receiver<SeatState>,
    released: std::sync::atomic::AtomicBool,
    notifier: Mutex<Option<Notifier>>,
}

fn state_of(state: &SeatState) -> (LicensingSeatState, String) {
    match state {
        SeatState::Held { .. } => (LicensingSeatState::Held, String::new()),
        SeatState::Reconnecting { .. } => (LicensingSeatState::Reconnecting, String::new()),
        SeatState::Lost { reason, .. } => (LicensingSeatState::Lost, reason.clone()),
    }
}

impl Seat {
    fn new(guard: SeatGuard, callback: LicensingSeatCallback, user_data: *mut c_void) -> Self {
        let state = guard.watch();
        let notifier = callback.map(|callback| {
            let (stop, mut stopped) = oneshot::channel::<()>();
            let mut states = guard.watch();
            let user_data = UserData(user_data);
            let thread = std::thread::Builder::new()
                .name("licensing-seat-callback".into())
                .spawn(move || {
                    let user_data = user_data;
                    let mut told = None;
                    loop {
                        let (now, reason) = state_of(&states.borrow_and_update());
                        if told != Some((now, reason.clone())) {
                            let reason_c = CString::new(reason.replace('\0', "")).unwrap_or_default();
                            // SAFETY: the product gave this callback and `user_data` for this use.
                            unsafe { callback(user_data.0, now, reason_c.as_ptr()) };
                            told = Some((now, reason));
                        }
                        // The callback runs outside the runtime, so it may call blocking functions.
                        let go_on = runtime().block_on(async {
                            tokio::select! {
                                changed = states.changed() => changed.is_ok(),
                                _ = &mut stopped => false,
                            }
                        });
                        if !go_on {
                            return;
                        }
                    }
                })
                .expect("a thread for the seat's callback starts");
            Notifier { stop, thread }
        });
        Self { guard: Mutex::new(Some(guard)), state, released: false.into(), notifier: Mutex::new(notifier) }
    }

    /// Stops the callback; when this returns (off the callback's own thread) it is not running
    /// and will not run again.
    fn silence(&self) {
        let notifier = self.notifier.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(Notifier { stop, thread }) = notifier {
            let _ = stop.send(());
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }

    /// Checks the seat in (once), waiting at most `limit` for the server's answer.
    fn release(&self, limit: Duration) -> bool {
        let guard = self.guard.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(guard) = guard else { return false };
        self.released.store(true, std::sync::atomic::Ordering::SeqCst);
        block_on(async move { tokio::time::timeout(limit, guard.release()).await.unwrap_or(false) })
    }
}

/// What a checkout or a borrow was asked for, read from its C arguments.
pub(crate) struct Checkout {
    pub(crate) client: Arc<Client>,
    pub(crate) credentials: Credentials,
    pub(crate) options: CheckoutOptions,
    callback: LicensingSeatCallback,
    user_data: *mut c_void,
}

/// Reads the common arguments of the checkout functions.
///
/// # Safety
/// As the exported functions' contracts.
pub(crate) unsafe fn checkout_arguments(
    client_handle: *const LicensingClient,
    key_or_id: *const c_char,
    password: *const c_char,
    options: *const LicensingCheckoutOptions,
) -> Result<Checkout, Failure> {
    let client = client(client_handle)?;
    // SAFETY: the caller's contract.
    let credentials = unsafe { credentials(key_or_id, password) }?;
    let mut o = CheckoutOptions::default();
    let (mut callback, mut user_data) = (None, std::ptr::null_mut());
    if !options.is_null() {
        // SAFETY: not NULL, and a valid LicensingCheckoutOptions by the caller's contract.
        let given = unsafe { *options };
        // SAFETY: a NUL-terminated string or NULL, by the caller's contract.
        if let Some(v) = unsafe { optional_text(given.feature, "options.feature") }? {
            o.feature = v.to_owned();
        }
        // SAFETY: a NUL-terminated string or NULL, by the caller's contract.
        if let Some(v) = unsafe { optional_text(given.user, "options.user") }? {
            o.user = v.to_owned();
        }
        // SAFETY: a NUL-terminated string or NULL, by the caller's contract.
        if let Some(v) = unsafe { optional_text(given.host, "options.host") }? {
            o.host = v.to_owned();
        }
        // SAFETY: a NUL-terminated string or NULL, by the caller's contract.
        if let Some(v) = unsafe { optional_text(given.client_instance_id, "options.client_instance_id") }? {
            o.client_instance_id = v.to_owned();
        }
        if given.ttl_ms > 0 {
            o.ttl = Duration::from_millis(given.ttl_ms.into());
        }
        callback = given.callback;
        user_data = given.user_data;
    }
    Ok(Checkout { client, credentials, options: o, callback, user_data })
}

/// Checks a seat out now. On success `*out_seat` holds it, heartbeating in the background until
/// [`licensing_seat_checkin`] or [`licensing_seat_free`]. Fails with `LICENSING_STATUS_SERVER`
/// and reason `NO_SEAT_AVAILABLE` when every seat is taken (see [`licensing_seat_wait`]).
///
/// # Safety
/// `key_or_id` is NUL-terminated, `password` NULL or NUL-terminated, `options` NULL or a valid
/// [`LicensingCheckoutOptions`] whose strings are NULL or NUL-terminated; `out_seat` is valid for
/// a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_seat_checkout(
    client: *const LicensingClient,
    key_or_id: *const c_char,
    password: *const c_char,
    options: *const LicensingCheckoutOptions,
    out_seat: *mut *mut LicensingSeat,
) -> LicensingStatus {
    call(|| {
        let out_seat = out(out_seat, "out_seat")?;
        // SAFETY: the caller's contract.
        let c = unsafe { checkout_arguments(client, key_or_id, password, options) }?;
        let guard = block_on(c.client.checkout(c.credentials, c.options))?;
        let seat = Seat::new(guard, c.callback, c.user_data);
        // SAFETY: checked by `out`.
        unsafe { put(out_seat, new_handle(Arc::new(seat))) };
        Ok(())
    })
}

/// Waits first come, first served until a seat is free, at most `timeout_ms` (0: the server's
/// longest wait), then holds it as [`licensing_seat_checkout`] does. Fails with
/// `LICENSING_STATUS_TIMEOUT` when the time runs out and `LICENSING_STATUS_CANCELLED` when
/// `cancel` (NULL: none) is triggered from another thread.
///
/// # Safety
/// As [`licensing_seat_checkout`]; `cancel` is NULL or a handle.
#[no_mangle]
pub unsafe extern "C" fn licensing_seat_wait(
    client: *const LicensingClient,
    key_or_id: *const c_char,
    password: *const c_char,
    options: *const LicensingCheckoutOptions,
    timeout_ms: u32,
    cancel: *const LicensingCancel,
    out_seat: *mut *mut LicensingSeat,
) -> LicensingStatus {
    call(|| {
        let out_seat = out(out_seat, "out_seat")?;
        // SAFETY: the caller's contract.
        let c = unsafe { checkout_arguments(client, key_or_id, password, options) }?;
        let mut cancelled = match cancel.is_null() {
            true => None,
            false => Some(get::<_, watch::Sender<bool>>(cancel, "cancel")?.subscribe()),
        };
        let max_wait = Duration::from_millis(timeout_ms.into());
        // The server ends the wait at `max_wait` (WAIT_TIMED_OUT); this bound covers a server
        // that does not answer at all.
        let bound = if timeout_ms == 0 { Duration::from_secs(3_700) } else { max_wait + Duration::from_secs(5) };
        let timed_out = || Failure::new(LicensingStatus::Timeout, "TIMEOUT", "no seat came free in time");
        let guard = block_on(async {
            let wait = c.client.wait_for_seat(c.credentials, c.options, max_wait);
            let cancel = async {
                match cancelled.as_mut() {
                    Some(rx) => {
                        let _ = rx.wait_for(|c| *c).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                outcome = tokio::time::timeout(bound, wait) => match outcome {
                    Ok(seat) => seat.map_err(Failure::from),
                    Err(_) => Err(timed_out()),
                },
                () = cancel => Err(Failure::new(LicensingStatus::Cancelled, "CANCELLED", "the wait was cancelled")),
            }
        })?;
        let seat = Seat::new(guard, c.callback, c.user_data);
        // SAFETY: checked by `out`.
        unsafe { put(out_seat, new_handle(Arc::new(seat))) };
        Ok(())
    })
}

/// The seat's state now and, when `out_expires_at_ms` is not NULL, when its current lease
/// expires (Unix milliseconds; 0 when lost or released).
///
/// # Safety
/// `out_state` is valid for a write, `out_expires_at_ms` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_seat_state(
    seat: *const LicensingSeat,
    out_state: *mut LicensingSeatState,
    out_expires_at_ms: *mut i64,
) -> LicensingStatus {
    call(|| {
        let out_state = out(out_state, "out_state")?;
        let seat: Arc<Seat> = get(seat, "seat")?;
        let (mut state, expires) = match &*seat.state.borrow() {
            SeatState::Held { expires_at_ms, .. } => (LicensingSeatState::Held, *expires_at_ms),
            SeatState::Reconnecting { expires_at_ms } => (LicensingSeatState::Reconnecting, *expires_at_ms),
            SeatState::Lost { .. } => (LicensingSeatState::Lost, 0),
        };
        if seat.released.load(std::sync::atomic::Ordering::SeqCst) {
            state = LicensingSeatState::Released;
        }
        // SAFETY: checked by `out`.
        unsafe { put(out_state, state) };
        if !out_expires_at_ms.is_null() {
            let expires =
                if matches!(state, LicensingSeatState::Held | LicensingSeatState::Reconnecting) { expires } else { 0 };
            // SAFETY: the caller's contract.
            unsafe { put(out_expires_at_ms, expires) };
        }
        Ok(())
    })
}

/// The current lease's ID (it changes when the library checks out again). `*out_value` is the
/// caller's (free with [`crate::licensing_string_free`]); `""` when the seat is lost.
///
/// # Safety
/// `out_value` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_seat_lease_id(
    seat: *const LicensingSeat,
    out_value: *mut *mut c_char,
) -> LicensingStatus {
    call(|| {
        let out_value = out(out_value, "out_value")?;
        let seat: Arc<Seat> = get(seat, "seat")?;
        let lease = match &*seat.state.borrow() {
            SeatState::Held { lease_id, .. } => lease_id.clone(),
            _ => String::new(),
        };
        // SAFETY: checked by `out`.
        unsafe { put_string(out_value, &lease) };
        Ok(())
    })
}

/// Why a lost seat was lost: `*out_reason` is the server's reason (e.g. `LEASE_REVOKED`), `""`
/// while the seat is not lost; `out_message` (NULL: not wanted) its explanation. Both are the
/// caller's (free with [`crate::licensing_string_free`]).
///
/// # Safety
/// `out_reason` is valid for a write, `out_message` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_seat_lost_reason(
    seat: *const LicensingSeat,
    out_reason: *mut *mut c_char,
    out_message: *mut *mut c_char,
) -> LicensingStatus {
    call(|| {
        let out_reason = out(out_reason, "out_reason")?;
        let seat: Arc<Seat> = get(seat, "seat")?;
        let (reason, message) = match &*seat.state.borrow() {
            SeatState::Lost { reason, message } => (reason.clone(), message.clone()),
            _ => (String::new(), String::new()),
        };
        // SAFETY: checked by `out`; `out_message` by the caller's contract.
        unsafe {
            put_string(out_reason, &reason);
            if !out_message.is_null() {
                put_string(out_message, &message);
            }
        }
        Ok(())
    })
}

/// Checks the seat in now and waits (at most 10 s) for the server's answer: `*out_released`
/// (NULL: not wanted) is true when a live lease was released. The callback is not called again.
/// The handle stays valid (state `RELEASED`) until [`licensing_seat_free`]; checking in twice
/// releases nothing the second time.
///
/// # Safety
/// `out_released` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_seat_checkin(
    seat: *const LicensingSeat,
    out_released: *mut bool,
) -> LicensingStatus {
    call(|| {
        let seat: Arc<Seat> = get(seat, "seat")?;
        seat.silence();
        let released = seat.release(Duration::from_secs(10));
        if !out_released.is_null() {
            // SAFETY: the caller's contract.
            unsafe { put(out_released, released) };
        }
        Ok(())
    })
}

/// Frees a seat, checking it in first when it is still held (waiting at most 5 s for the
/// server). When this returns the seat's callback is not running and will not run again
/// (unless called from that callback itself). NULL is allowed.
#[no_mangle]
pub extern "C" fn licensing_seat_free(seat: *mut LicensingSeat) {
    free::<_, Seat>(seat, "seat", |seat| {
        seat.silence();
        seat.release(Duration::from_secs(5));
    });
}

/// A new cancellation handle for [`licensing_seat_wait`], freed with [`licensing_cancel_free`].
///
/// # Safety
/// `out_cancel` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_cancel_new(out_cancel: *mut *mut LicensingCancel) -> LicensingStatus {
    call(|| {
        let out_cancel = out(out_cancel, "out_cancel")?;
        let (sender, _) = watch::channel(false);
        // SAFETY: checked by `out`.
        unsafe { put(out_cancel, new_handle(Arc::new(sender))) };
        Ok(())
    })
}

/// Cancels every wait using this handle, now and later (a handle is triggered once for good).
#[no_mangle]
pub extern "C" fn licensing_cancel_trigger(cancel: *const LicensingCancel) -> LicensingStatus {
    call(|| {
        let sender: Arc<watch::Sender<bool>> = get(cancel, "cancel")?;
        sender.send_replace(true);
        Ok(())
    })
}

/// Frees a cancellation handle (a wait using it goes on, uncancellable). NULL is allowed.
#[no_mangle]
pub extern "C" fn licensing_cancel_free(cancel: *mut LicensingCancel) {
    free::<_, watch::Sender<bool>>(cancel, "cancel", drop);
}
