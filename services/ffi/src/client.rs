//! The connection to the licensing server: create and free a [`LicensingClient`], and this
//! machine's fingerprint.

use crate::{call, free, get, new_handle, optional_text, out, put, put_string, text, Failure, LicensingStatus};
use licensing_client::tls::{Certificate, ClientTlsConfig, Identity};
use licensing_client::Client;
use std::ffi::c_char;

/// A connection to the licensing server plus the server's public key the product embeds.
/// Connects lazily: creating one succeeds while the server is down.
pub struct LicensingClient {
    _opaque: [u8; 0],
}

/// Creates a client for `endpoint` (e.g. `http://licensing.example:50051`) that verifies
/// certificates and lease tokens with `public_key` (base64 of the server's Ed25519 key, from
/// `GetVerifyingKey`). On success `*out` is a handle to free with [`licensing_client_free`].
///
/// # Safety
/// `endpoint` and `public_key` are NUL-terminated strings; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_client_new(
    endpoint: *const c_char,
    public_key: *const c_char,
    out_client: *mut *mut LicensingClient,
) -> LicensingStatus {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        licensing_client_new_tls(endpoint, public_key, std::ptr::null(), std::ptr::null(), std::ptr::null(), out_client)
    }
}

/// As [`licensing_client_new`], over TLS (`endpoint` is `https://`): `ca_pem_path` names the PEM
/// file of the CA that signed the server's certificate (NULL: the system's roots are not used,
/// so give it); `cert_pem_path` and `key_pem_path` the product's own certificate and key for
/// mutual TLS (both NULL without). With all three NULL this is [`licensing_client_new`].
///
/// # Safety
/// `endpoint` and `public_key` are NUL-terminated strings, the paths NULL or NUL-terminated;
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_client_new_tls(
    endpoint: *const c_char,
    public_key: *const c_char,
    ca_pem_path: *const c_char,
    cert_pem_path: *const c_char,
    key_pem_path: *const c_char,
    out_client: *mut *mut LicensingClient,
) -> LicensingStatus {
    call(|| {
        let out_client = out(out_client, "out_client")?;
        // SAFETY: a NUL-terminated string or NULL, by the caller's contract.
        let endpoint = unsafe { text(endpoint, "endpoint") }?;
        // SAFETY: a NUL-terminated string or NULL, by the caller's contract.
        let public_key = unsafe { text(public_key, "public_key") }?;
        // SAFETY: a NUL-terminated string or NULL, by the caller's contract.
        let ca = unsafe { optional_text(ca_pem_path, "ca_pem_path") }?;
        // SAFETY: a NUL-terminated string or NULL, by the caller's contract.
        let cert = unsafe { optional_text(cert_pem_path, "cert_pem_path") }?;
        // SAFETY: a NUL-terminated string or NULL, by the caller's contract.
        let key = unsafe { optional_text(key_pem_path, "key_pem_path") }?;
        let read = |path: &str| {
            std::fs::read(path).map_err(|e| Failure::new(LicensingStatus::Storage, "STORAGE", format!("{path}: {e}")))
        };
        let client = if ca.is_none() && cert.is_none() && key.is_none() {
            // The client's runtime-bound parts (its lazy channel) are made inside the runtime.
            let _entered = crate::runtime().enter();
            Client::new(endpoint, public_key)?
        } else {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = ca {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            match (cert, key) {
                (Some(cert), Some(key)) => tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?)),
                (None, None) => {}
                _ => return Err(Failure::invalid("give both cert_pem_path and key_pem_path, or neither")),
            }
            let _entered = crate::runtime().enter();
            Client::with_tls(endpoint, public_key, tls)?
        };
        // SAFETY: checked by `out`, valid for a write by the caller's contract.
        unsafe { put(out_client, new_handle(std::sync::Arc::new(client))) };
        Ok(())
    })
}

/// Frees a client. Seats, licenses and borrowed seats made from it keep working until they are
/// freed themselves. NULL is allowed; a freed handle is reported through the last error.
#[no_mangle]
pub extern "C" fn licensing_client_free(client: *mut LicensingClient) {
    free::<_, Client>(client, "client", drop);
}

/// This machine's fingerprint components, one `name=value` line each (machine-id, board serial,
/// MAC address, host name, as available), the ones node-locked activation binds to.
/// `*out` is the caller's: free it with [`crate::licensing_string_free`].
///
/// # Safety
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn licensing_fingerprint(out_text: *mut *mut c_char) -> LicensingStatus {
    call(|| {
        let out_text = out(out_text, "out_text")?;
        let lines: String =
            licensing_client::fingerprint::this_machine().iter().map(|c| format!("{}={}\n", c.name, c.value)).collect();
        // SAFETY: checked by `out`.
        unsafe { put_string(out_text, &lines) };
        Ok(())
    })
}

/// The client behind a handle.
pub(crate) fn client(handle: *const LicensingClient) -> Result<std::sync::Arc<Client>, Failure> {
    get(handle, "client")
}
