//! Node-locked licenses: a [`LicensingLicense`] activates this machine, validates at each start
//! (online, else offline from the certificate in trusted storage until its `valid_until`),
//! refreshes and deactivates; a [`LicensingCertificate`] gives the certificate's fields.

use crate::client::{client, LicensingClient};
use crate::{
    block_on, call, credentials, free, get, new_handle, optional_text, out, put, put_string, text, Failure,
    LicensingStatus,
};
use licensing_client::node_locked::{NodeLocked, Validity};
use licensing_client::storage::TrustedStorage;
use licensing_domain::certificate::CertificatePayload;
use std::ffi::c_char;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A product's node-locked license on this machine: credentials, trusted-storage file and
/// fingerprint. Calls on one license from several threads take turns.
pub struct LicensingLicense {
    _opaque: [u8; 0],
}

/// A verified certificate's fields (from activate, validate or refresh).
pub struct LicensingCertificate {
    _opaque: [u8; 0],
}

/// How [`licensing_license_validate`] established validity.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LicensingValidity {
    /// The server said valid; the fresh certificate was stored.
    Online = 0,
    /// The server was unreachable; the stored certificate allows use until its `valid_until`.
    Offline = 1,
}

struct License {
    product: NodeLocked,
    path: PathBuf,
    /// One operation at a time: they read and rewrite the same storage file.
    turn: Mutex<()>,
}

/// Where a license's certificate is kept when the product does not say: the user's local data
/// directory (`$XDG_DATA_HOME`, `~/.local/share`, `~/Library/Application Support`,
/// `%LOCALAPPDATA%`), under `licensing/license.json`.
fn default_storage_path() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let base = if cfg!(windows) {
        var("LOCALAPPDATA")
    } else if cfg!(target_os = "macos") {
        var("HOME").map(|h| h.join("Library/Application Support"))
    } else {
        var("XDG_DATA_HOME").or_else(|| var("HOME").map(|h| h.join(".local/share")))
    };
    base.unwrap_or_else(std::env::temp_dir).join("licensing").join("license.json")
}

/// Opens the license `key_or_id` (a license key when `password` is NULL, else a License ID and
/// its activation password) for this machine, keeping its certificate at `storage_path` (NULL:
/// the user's data directory, see [`licensing_license_storage_path`]). Does not call the server.
/// `*out_license` is freed with [`licensing_license_free`].
///
/// # Safety
/// `client` is a handle or NULL; the strings are NULL or NUL-terminated; `out_license` is valid
/// for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_license_open(
    client_handle: *const LicensingClient,
    key_or_id: *const c_char,
    password: *const c_char,
    storage_path: *const c_char,
    out_license: *mut *mut LicensingLicense,
) -> LicensingStatus {
    call(|| {
        let out_license = out(out_license, "out_license")?;
        let client = client(client_handle)?;
        // SAFETY: the caller's contract.
        let credentials = unsafe { credentials(key_or_id, password) }?;
        // SAFETY: the caller's contract.
        let path = unsafe { optional_text(storage_path, "storage_path") }?
            .map(PathBuf::from)
            .unwrap_or_else(default_storage_path);
        let product = NodeLocked::new(
            (*client).clone(),
            TrustedStorage::new(path.clone()),
            credentials,
            licensing_client::fingerprint::this_machine(),
        );
        let license = License { product, path, turn: Mutex::new(()) };
        // SAFETY: checked by `out`.
        unsafe { put(out_license, new_handle(Arc::new(license))) };
        Ok(())
    })
}

/// Frees a license handle (the stored certificate stays on disk). NULL is allowed.
#[no_mangle]
pub extern "C" fn licensing_license_free(license: *mut LicensingLicense) {
    free::<_, License>(license, "license", drop);
}

/// The trusted-storage file of a license. `*out_path` is the caller's: free it with
/// [`crate::licensing_string_free`].
///
/// # Safety
/// `out_path` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_license_storage_path(
    license: *const LicensingLicense,
    out_path: *mut *mut c_char,
) -> LicensingStatus {
    call(|| {
        let out_path = out(out_path, "out_path")?;
        let license: Arc<License> = get(license, "license")?;
        // SAFETY: checked by `out`.
        unsafe { put_string(out_path, &license.path.to_string_lossy()) };
        Ok(())
    })
}

fn run<T>(license: &License, op: impl FnOnce(&NodeLocked) -> Result<T, Failure>) -> Result<T, Failure> {
    let _turn = license.turn.lock().unwrap_or_else(|p| p.into_inner());
    op(&license.product)
}

/// Hands out a certificate when the caller asked for one.
///
/// # Safety
/// `out_certificate` is NULL or valid for a write.
unsafe fn give(out_certificate: *mut *mut LicensingCertificate, payload: CertificatePayload) {
    if !out_certificate.is_null() {
        // SAFETY: the caller's contract.
        unsafe { put(out_certificate, new_handle(Arc::new(payload))) };
    }
}

/// Activates this machine: the server checks the credentials and the activation limit and
/// issues a certificate, which is verified with the embedded public key and stored.
/// `machine_name`, `platform` and `product_version` may be NULL (empty). When
/// `out_certificate` is not NULL it receives the certificate (free with
/// [`licensing_certificate_free`]).
///
/// # Safety
/// The strings are NULL or NUL-terminated; `out_certificate` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_license_activate(
    license: *const LicensingLicense,
    machine_name: *const c_char,
    platform: *const c_char,
    product_version: *const c_char,
    out_certificate: *mut *mut LicensingCertificate,
) -> LicensingStatus {
    call(|| {
        let license: Arc<License> = get(license, "license")?;
        // SAFETY: a NUL-terminated string or NULL, by the caller's contract.
        let machine_name = unsafe { optional_text(machine_name, "machine_name") }?.unwrap_or_default();
        // SAFETY: a NUL-terminated string or NULL, by the caller's contract.
        let platform = unsafe { optional_text(platform, "platform") }?.unwrap_or(std::env::consts::OS);
        // SAFETY: a NUL-terminated string or NULL, by the caller's contract.
        let version = unsafe { optional_text(product_version, "product_version") }?.unwrap_or_default();
        let payload = run(&license, |p| Ok(block_on(p.activate(machine_name, platform, version))?))?;
        // SAFETY: the caller's contract.
        unsafe { give(out_certificate, payload) };
        Ok(())
    })
}

/// Validates the license for `modules` (an array of `module_count` strings; NULL with a count
/// of 0 for none) and `product_version` (NULL: not checked). Online when the server answers,
/// storing its fresh certificate; offline from the stored certificate when it does not, until
/// the certificate's `valid_until`, refusing a clock set back. `*out_validity` says which.
///
/// Fails with `LICENSING_STATUS_NOT_VALID` when the server says not valid (the reason is its
/// validation code), and with the offline statuses (`EXPIRED`, `CLOCK_SET_BACK`,
/// `MODULE_NOT_LICENSED`, `NO_CERTIFICATE`, ...) when offline use is refused.
///
/// # Safety
/// `modules` points to `module_count` NUL-terminated strings (or is NULL with 0);
/// `product_version` is NULL or NUL-terminated; the out-pointers are NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_license_validate(
    license: *const LicensingLicense,
    modules: *const *const c_char,
    module_count: usize,
    product_version: *const c_char,
    out_validity: *mut LicensingValidity,
    out_certificate: *mut *mut LicensingCertificate,
) -> LicensingStatus {
    call(|| {
        let license: Arc<License> = get(license, "license")?;
        if modules.is_null() && module_count > 0 {
            return Err(Failure::new(LicensingStatus::InvalidArgument, "NULL_ARGUMENT", "`modules` is NULL"));
        }
        let mut names = Vec::with_capacity(module_count.min(1024));
        for i in 0..module_count {
            // SAFETY: `modules` holds `module_count` entries by the caller's contract.
            let module = unsafe { *modules.add(i) };
            // SAFETY: each entry is a NUL-terminated string by the caller's contract.
            names.push(unsafe { text(module, &format!("modules[{i}]")) }?);
        }
        // SAFETY: the caller's contract.
        let version = unsafe { optional_text(product_version, "product_version") }?.unwrap_or_default();
        let validity = run(&license, |p| Ok(block_on(p.validate(&names, version))?))?;
        let (validity, payload) = match validity {
            Validity::Online(payload) => (LicensingValidity::Online, payload),
            Validity::Offline(payload) => (LicensingValidity::Offline, payload),
            Validity::Invalid { code, detail } => {
                return Err(Failure::new(LicensingStatus::NotValid, &code, detail));
            }
        };
        if !out_validity.is_null() {
            // SAFETY: the caller's contract.
            unsafe { put(out_validity, validity) };
        }
        // SAFETY: the caller's contract.
        unsafe { give(out_certificate, payload) };
        Ok(())
    })
}

/// Asks the server for a fresh certificate (a longer offline period) and stores it.
///
/// # Safety
/// `out_certificate` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_license_refresh(
    license: *const LicensingLicense,
    out_certificate: *mut *mut LicensingCertificate,
) -> LicensingStatus {
    call(|| {
        let license: Arc<License> = get(license, "license")?;
        let payload = run(&license, |p| Ok(block_on(p.refresh())?))?;
        // SAFETY: the caller's contract.
        unsafe { give(out_certificate, payload) };
        Ok(())
    })
}

/// Returns this machine's activation to the server and deletes the stored certificate.
#[no_mangle]
pub extern "C" fn licensing_license_deactivate(license: *const LicensingLicense) -> LicensingStatus {
    call(|| {
        let license: Arc<License> = get(license, "license")?;
        run(&license, |p| Ok(block_on(p.deactivate())?))
    })
}

/// Frees a certificate. NULL is allowed.
#[no_mangle]
pub extern "C" fn licensing_certificate_free(certificate: *mut LicensingCertificate) {
    free::<_, CertificatePayload>(certificate, "certificate", drop);
}

fn field(
    certificate: *const LicensingCertificate,
    out_value: *mut *mut c_char,
    pick: impl FnOnce(&CertificatePayload) -> String,
) -> LicensingStatus {
    call(|| {
        let out_value = out(out_value, "out_value")?;
        let payload: Arc<CertificatePayload> = get(certificate, "certificate")?;
        // SAFETY: checked by `out`; the exported callers pass the C caller's valid pointer.
        unsafe { put_string(out_value, &pick(&payload)) };
        Ok(())
    })
}

fn instant(
    certificate: *const LicensingCertificate,
    out_ms: *mut i64,
    pick: impl FnOnce(&CertificatePayload) -> i64,
) -> LicensingStatus {
    certificate_value(certificate, out_ms, "out_ms", pick)
}

/// Writes one plain value of the certificate's payload to `*out_value` (named `out_name` in
/// errors): the shape of every accessor of a number.
pub(crate) fn certificate_value<T>(
    certificate: *const LicensingCertificate,
    out_value: *mut T,
    out_name: &'static str,
    pick: impl FnOnce(&CertificatePayload) -> T,
) -> LicensingStatus {
    call(|| {
        let out_value = out(out_value, out_name)?;
        let payload: Arc<CertificatePayload> = get(certificate, "certificate")?;
        // SAFETY: checked by `out`; the exported callers pass the C caller's valid pointer.
        unsafe { put(out_value, pick(&payload)) };
        Ok(())
    })
}

/// The certificate's License ID. `*out_value` is the caller's (free with
/// [`crate::licensing_string_free`]).
///
/// # Safety
/// `out_value` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_certificate_license_id(
    certificate: *const LicensingCertificate,
    out_value: *mut *mut c_char,
) -> LicensingStatus {
    field(certificate, out_value, |p| p.license_id.clone())
}

/// The certificate's product code. `*out_value` is the caller's (free with
/// [`crate::licensing_string_free`]).
///
/// # Safety
/// `out_value` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_certificate_product_code(
    certificate: *const LicensingCertificate,
    out_value: *mut *mut c_char,
) -> LicensingStatus {
    field(certificate, out_value, |p| p.product_code.clone())
}

/// The license's expiry (Unix milliseconds), or 0 when the license never expires.
///
/// # Safety
/// `out_ms` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_certificate_expires_at_ms(
    certificate: *const LicensingCertificate,
    out_ms: *mut i64,
) -> LicensingStatus {
    instant(certificate, out_ms, |p| p.expires_at_ms.unwrap_or(0))
}

/// When the license's grace period ends (Unix milliseconds: its expiry plus the grace period),
/// or 0 when the license has none.
///
/// # Safety
/// `out_ms` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_certificate_grace_ends_at_ms(
    certificate: *const LicensingCertificate,
    out_ms: *mut i64,
) -> LicensingStatus {
    instant(certificate, out_ms, |p| p.grace_ends_at_ms.unwrap_or(0))
}

/// Until when the certificate allows offline use (Unix milliseconds).
///
/// # Safety
/// `out_ms` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_certificate_valid_until_ms(
    certificate: *const LicensingCertificate,
    out_ms: *mut i64,
) -> LicensingStatus {
    instant(certificate, out_ms, |p| p.valid_until_ms)
}

/// After when the product should refresh the certificate (Unix milliseconds).
///
/// # Safety
/// `out_ms` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_certificate_refresh_after_ms(
    certificate: *const LicensingCertificate,
    out_ms: *mut i64,
) -> LicensingStatus {
    instant(certificate, out_ms, |p| p.refresh_after_ms)
}

/// How many modules the certificate licenses.
///
/// # Safety
/// `out_count` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_certificate_module_count(
    certificate: *const LicensingCertificate,
    out_count: *mut usize,
) -> LicensingStatus {
    certificate_value(certificate, out_count, "out_count", |p| p.modules.len())
}

/// How many machines the license may be activated on (its seats; 0 in a certificate signed
/// before servers put it in).
///
/// # Safety
/// `out_seats` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_certificate_seats(
    certificate: *const LicensingCertificate,
    out_seats: *mut i32,
) -> LicensingStatus {
    certificate_value(certificate, out_seats, "out_seats", |p| p.seats)
}

/// The module at `index` (below [`licensing_certificate_module_count`]). `*out_value` is the
/// caller's (free with [`crate::licensing_string_free`]).
///
/// # Safety
/// `out_value` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_certificate_module(
    certificate: *const LicensingCertificate,
    index: usize,
    out_value: *mut *mut c_char,
) -> LicensingStatus {
    call(|| {
        let out_value = out(out_value, "out_value")?;
        let payload: Arc<CertificatePayload> = get(certificate, "certificate")?;
        let module = payload.modules.get(index).ok_or_else(|| {
            Failure::invalid(format!("module index {index} is past the {} modules", payload.modules.len()))
        })?;
        // SAFETY: checked by `out`, valid by the caller's contract.
        unsafe { put_string(out_value, module) };
        Ok(())
    })
}
