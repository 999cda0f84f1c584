//! Metered features: record use of a license's meters (`exports`, `cpu-hours`) and read what is
//! left, online ([`licensing_record_usage`], [`licensing_meter_usage`]) or as the last
//! certificate saw it ([`licensing_certificate_meter`]). Each use carries an idempotency key, so
//! a use sent again after a lost answer is counted once.

use crate::client::{client, LicensingClient};
use crate::node_locked::{certificate_value, LicensingCertificate};
use crate::{block_on, call, credentials, get, optional_text, out, put, put_string, text, Failure, LicensingStatus};
use licensing_client::metering::MeterCount;
use licensing_domain::certificate::{CertificateMeter, CertificatePayload};
use licensing_domain::text::quoted;
use std::ffi::c_char;
use std::sync::Arc;

/// A meter's count in its current period.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LicensingMeterCount {
    /// Counted in the period, overage included.
    pub used: i64,
    /// Use allowed per period.
    pub limit: i64,
    /// Use allowed beyond the limit per period.
    pub overage: i64,
    /// Left within the limit (0 once in overage).
    pub remaining: i64,
    /// When the count starts again (Unix milliseconds); 0 when it never resets.
    pub period_end_ms: i64,
}

impl From<&MeterCount> for LicensingMeterCount {
    fn from(c: &MeterCount) -> Self {
        Self {
            used: c.used,
            limit: c.limit,
            overage: c.overage,
            remaining: c.remaining,
            period_end_ms: c.period_end_ms.unwrap_or(0),
        }
    }
}

impl From<&CertificateMeter> for LicensingMeterCount {
    fn from(m: &CertificateMeter) -> Self {
        Self {
            used: m.used,
            limit: m.limit,
            overage: m.overage,
            remaining: m.remaining,
            period_end_ms: m.period_end_ms.unwrap_or(0),
        }
    }
}

/// A new idempotency key for one use (`use_...`), for a product that keeps the key to send the
/// same use again after a failure. `*out_key` is the caller's: free it with
/// [`crate::licensing_string_free`].
///
/// # Safety
/// `out_key` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_new_idempotency_key(out_key: *mut *mut c_char) -> LicensingStatus {
    call(|| {
        let out_key = out(out_key, "out_key")?;
        // SAFETY: checked by `out`, valid by the caller's contract.
        unsafe { put_string(out_key, &licensing_client::metering::new_idempotency_key()) };
        Ok(())
    })
}

/// Records `amount` (at least 1) of `meter` for the license `key_or_id` (a license key when
/// `password` is NULL, else a License ID and its activation password) under `idempotency_key`
/// (NULL: a new key; give one from [`licensing_new_idempotency_key`] to send the same use again
/// safely). The library itself retries an unreachable server a few times with the same key.
///
/// `*out_count` (may be NULL) receives the meter's count after the use; `*out_replayed` (may be
/// NULL) is true when the server had counted this key before and added nothing.
///
/// A use beyond the meter's limit and overage fails with `LICENSING_STATUS_SERVER` and reason
/// `METER_LIMIT_REACHED` (the message says how much is left) and counts nothing; a meter the
/// license does not have with `METER_NOT_FOUND`; a key sent before for another meter or amount
/// with `IDEMPOTENCY_KEY_REUSED`.
///
/// # Safety
/// The strings are NULL or NUL-terminated; the out-pointers are NULL or valid for a write.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn licensing_record_usage(
    client_handle: *const LicensingClient,
    key_or_id: *const c_char,
    password: *const c_char,
    meter: *const c_char,
    amount: i64,
    idempotency_key: *const c_char,
    out_count: *mut LicensingMeterCount,
    out_replayed: *mut bool,
) -> LicensingStatus {
    call(|| {
        let client = client(client_handle)?;
        // SAFETY: the caller's contract.
        let credentials = unsafe { credentials(key_or_id, password) }?;
        // SAFETY: the caller's contract.
        let meter = unsafe { text(meter, "meter") }?;
        // SAFETY: the caller's contract.
        let key = match unsafe { optional_text(idempotency_key, "idempotency_key") }? {
            Some(key) => key.to_owned(),
            None => licensing_client::metering::new_idempotency_key(),
        };
        let recorded = block_on(client.record_usage(&credentials, meter, amount, &key))?;
        if !out_count.is_null() {
            // SAFETY: not NULL, valid for a write by the caller's contract.
            unsafe { put(out_count, LicensingMeterCount::from(&recorded.count)) };
        }
        if !out_replayed.is_null() {
            // SAFETY: not NULL, valid for a write by the caller's contract.
            unsafe { put(out_replayed, recorded.replayed) };
        }
        Ok(())
    })
}

/// The count of `meter` in its current period, from the server, for the license `key_or_id`
/// (credentials as for [`licensing_record_usage`]). Fails with `LICENSING_STATUS_SERVER` and
/// reason `METER_NOT_FOUND` when the license has no such meter.
///
/// # Safety
/// The strings are NULL or NUL-terminated; `out_count` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_meter_usage(
    client_handle: *const LicensingClient,
    key_or_id: *const c_char,
    password: *const c_char,
    meter: *const c_char,
    out_count: *mut LicensingMeterCount,
) -> LicensingStatus {
    call(|| {
        let out_count = out(out_count, "out_count")?;
        let client = client(client_handle)?;
        // SAFETY: the caller's contract.
        let credentials = unsafe { credentials(key_or_id, password) }?;
        // SAFETY: the caller's contract.
        let meter = unsafe { text(meter, "meter") }?;
        let counts = block_on(client.meter_usage(&credentials))?;
        let count = counts.iter().find(|c| c.meter == meter).ok_or_else(|| {
            let known: Vec<&str> = counts.iter().map(|c| c.meter.as_str()).collect();
            not_found(LicensingStatus::Server, meter, &known, "the license")
        })?;
        // SAFETY: checked by `out`, valid by the caller's contract.
        unsafe { put(out_count, LicensingMeterCount::from(count)) };
        Ok(())
    })
}

/// A meter asked for by code that `whose` does not have; the message lists what it has.
fn not_found(status: LicensingStatus, meter: &str, known: &[&str], whose: &str) -> Failure {
    let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
    Failure::new(status, "METER_NOT_FOUND", format!("{whose} has no meter {} (its meters: {known})", quoted(meter)))
}

/// How many meters the certificate carries (0 for a license without meters).
///
/// # Safety
/// `out_count` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_certificate_meter_count(
    certificate: *const LicensingCertificate,
    out_count: *mut usize,
) -> LicensingStatus {
    certificate_value(certificate, out_count, "out_count", |p| p.meters.len())
}

/// The code of the meter at `index` (below [`licensing_certificate_meter_count`]). `*out_code`
/// is the caller's (free with [`crate::licensing_string_free`]).
///
/// # Safety
/// `out_code` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_certificate_meter_code(
    certificate: *const LicensingCertificate,
    index: usize,
    out_code: *mut *mut c_char,
) -> LicensingStatus {
    call(|| {
        let out_code = out(out_code, "out_code")?;
        let payload: Arc<CertificatePayload> = get(certificate, "certificate")?;
        let meter = payload.meters.get(index).ok_or_else(|| {
            Failure::invalid(format!("meter index {index} is past the {} meters", payload.meters.len()))
        })?;
        // SAFETY: checked by `out`, valid by the caller's contract.
        unsafe { put_string(out_code, &meter.code) };
        Ok(())
    })
}

/// The count of `meter` when the certificate was signed (what was left then, for a product
/// that checks offline). Fails with `LICENSING_STATUS_INVALID_ARGUMENT` and reason
/// `METER_NOT_FOUND` when the certificate has no such meter.
///
/// # Safety
/// `meter` is a NUL-terminated string; `out_count` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_certificate_meter(
    certificate: *const LicensingCertificate,
    meter: *const c_char,
    out_count: *mut LicensingMeterCount,
) -> LicensingStatus {
    call(|| {
        let out_count = out(out_count, "out_count")?;
        let payload: Arc<CertificatePayload> = get(certificate, "certificate")?;
        // SAFETY: the caller's contract.
        let meter = unsafe { text(meter, "meter") }?;
        let found = payload.meters.iter().find(|m| m.code == meter).ok_or_else(|| {
            let known: Vec<&str> = payload.meters.iter().map(|m| m.code.as_str()).collect();
            not_found(LicensingStatus::InvalidArgument, meter, &known, "the certificate")
        })?;
        // SAFETY: checked by `out`, valid by the caller's contract.
        unsafe { put(out_count, LicensingMeterCount::from(found)) };
        Ok(())
    })
}
