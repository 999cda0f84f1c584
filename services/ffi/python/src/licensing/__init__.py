"""Floating seats and node-locked licenses from the licensing server, for Python products.

A typed wrapper (ctypes) of the C library ``liblicensing_ffi`` (crate ``licensing-ffi``), which
does the work: heartbeats in the background, re-checkout of a lost lease, trusted storage and
offline certificate checks. The library is the one bundled in this package, or the one named by
the ``LICENSING_LIBRARY`` environment variable.

    client = licensing.Client("http://licensing.example:50051", PUBLIC_KEY)
    with client.checkout(LICENSE_KEY) as seat:     # checked in when the block ends
        work()                                     # seat.state tells HELD / RECONNECTING / LOST
    client.record_usage(LICENSE_KEY, "exports", 1) # metered use, counted once per idempotency key
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

__all__ = [
    "BorrowedSeat",
    "Cancel",
    "Certificate",
    "Client",
    "LicensingError",
    "MeterCount",
    "NodeLockedLicense",
    "Seat",
    "SeatState",
    "Status",
    "UseRecorded",
    "Validity",
    "new_idempotency_key",
]


class Status(enum.IntEnum):
    """The C library's ``LicensingStatus``."""

    OK = 0
    INVALID_ARGUMENT = 1
    INVALID_HANDLE = 2
    UNREACHABLE = 3
    SERVER = 4
    NOT_VALID = 5
    NO_CERTIFICATE = 6
    BAD_SIGNATURE = 7
    EXPIRED = 8
    CLOCK_SET_BACK = 9
    FINGERPRINT_MISMATCH = 10
    MODULE_NOT_LICENSED = 11
    STORAGE = 12
    TIMEOUT = 13
    CANCELLED = 14
    INTERNAL = 15


class SeatState(enum.IntEnum):
    """A floating seat's state."""

    HELD = 0
    RECONNECTING = 1
    LOST = 2
    RELEASED = 3


class Validity(enum.IntEnum):
    """How a validation established validity."""

    ONLINE = 0
    OFFLINE = 1


class LicensingError(Exception):
    """A failed call: ``status``, the stable ``reason`` (e.g. ``NO_SEAT_AVAILABLE``) and the message."""

    def __init__(self, status: Status, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}" if reason else message)
        self.status = status
        self.reason = reason
        self.message = message


def _library_path() -> str:
    named = os.environ.get("LICENSING_LIBRARY")
    if named:
        return named
    here = Path(__file__).parent
    for name in ("liblicensing_ffi.so", "liblicensing_ffi.dylib", "licensing_ffi.dll"):
        if (here / name).exists():
            return str(here / name)
    found = ctypes.util.find_library("licensing_ffi")
    if found:
        return found
    raise ImportError("liblicensing_ffi is neither bundled nor named by LICENSING_LIBRARY")


_lib = ctypes.CDLL(_library_path())
_c = ctypes.c_char_p
_p = ctypes.c_void_p
_pp = ctypes.POINTER(ctypes.c_void_p)
_status = ctypes.c_int
_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p)


class _Options(ctypes.Structure):
    _fields_ = [
        ("feature", _c),
        ("user", _c),
        ("host", _c),
        ("client_instance_id", _c),
        ("ttl_ms", ctypes.c_uint32),
        ("callback", _CALLBACK),
        ("user_data", _p),
    ]


class _MeterCount(ctypes.Structure):
    _fields_ = [
        ("used", ctypes.c_int64),
        ("limit", ctypes.c_int64),
        ("overage", ctypes.c_int64),
        ("remaining", ctypes.c_int64),
        ("period_end_ms", ctypes.c_int64),
    ]


def _declare(name: str, restype, *argtypes) -> None:
    function = getattr(_lib, name)
    function.restype = restype
    function.argtypes = list(argtypes)


_declare("licensing_last_error_message", _c)
_declare("licensing_last_error_reason", _c)
_declare("licensing_version", _c)
_declare("licensing_string_free", None, _p)
_declare("licensing_client_new_tls", _status, _c, _c, _c, _c, _c, _pp)
_declare("licensing_client_free", None, _p)
_declare("licensing_fingerprint", _status, _pp)
_declare("licensing_license_open", _status, _p, _c, _c, _c, _pp)
_declare("licensing_license_free", None, _p)
_declare("licensing_license_storage_path", _status, _p, _pp)
_declare("licensing_license_activate", _status, _p, _c, _c, _c, _pp)
_declare("licensing_license_validate", _status, _p, ctypes.POINTER(_c), ctypes.c_size_t, _c,
         ctypes.POINTER(ctypes.c_int), _pp)
_declare("licensing_license_refresh", _status, _p, _pp)
_declare("licensing_license_deactivate", _status, _p)
_declare("licensing_certificate_free", None, _p)
for _field in ("license_id", "product_code"):
    _declare(f"licensing_certificate_{_field}", _status, _p, _pp)
for _field in ("expires_at_ms", "valid_until_ms", "refresh_after_ms"):
    _declare(f"licensing_certificate_{_field}", _status, _p, ctypes.POINTER(ctypes.c_int64))
_declare("licensing_certificate_grace_ends_at_ms", _status, _p, ctypes.POINTER(ctypes.c_int64))
_declare("licensing_certificate_seats", _status, _p, ctypes.POINTER(ctypes.c_int32))
_declare("licensing_certificate_meter_count", _status, _p, ctypes.POINTER(ctypes.c_size_t))
_declare("licensing_certificate_meter_code", _status, _p, ctypes.c_size_t, _pp)
_declare("licensing_certificate_meter", _status, _p, _c, ctypes.POINTER(_MeterCount))
_declare("licensing_new_idempotency_key", _status, _pp)
_declare("licensing_record_usage", _status, _p, _c, _c, _c, ctypes.c_int64, _c, ctypes.POINTER(_MeterCount),
         ctypes.POINTER(ctypes.c_bool))
_declare("licensing_meter_usage", _status, _p, _c, _c, _c, ctypes.POINTER(_MeterCount))
_declare("licensing_certificate_module_count", _status, _p, ctypes.POINTER(ctypes.c_size_t))
_declare("licensing_certificate_module", _status, _p, ctypes.c_size_t, _pp)
_declare("licensing_seat_checkout", _status, _p, _c, _c, ctypes.POINTER(_Options), _pp)
_declare("licensing_seat_wait", _status, _p, _c, _c, ctypes.POINTER(_Options), ctypes.c_uint32, _p, _pp)
_declare("licensing_seat_state", _status, _p, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int64))
_declare("licensing_seat_lease_id", _status, _p, _pp)
_declare("licensing_seat_lost_reason", _status, _p, _pp, _pp)
_declare("licensing_seat_checkin", _status, _p, ctypes.POINTER(ctypes.c_bool))
_declare("licensing_seat_free", None, _p)
_declare("licensing_cancel_new", _status, _pp)
_declare("licensing_cancel_trigger", _status, _p)
_declare("licensing_cancel_free", None, _p)
_declare("licensing_borrow", _status, _p, _c, _c, ctypes.POINTER(_Options), ctypes.c_uint32, _pp)
_declare("licensing_borrowed_save", _status, _p, _c)
_declare("licensing_borrowed_load", _status, _c, _pp)
_declare("licensing_borrowed_check", _status, _p, _p, ctypes.POINTER(ctypes.c_int64))
_declare("licensing_borrowed_return", _status, _p, _p, ctypes.POINTER(ctypes.c_bool))
_declare("licensing_borrowed_free", None, _p)

version: str = _lib.licensing_version().decode()


def _check(status: int) -> None:
    if status != Status.OK:
        reason = (_lib.licensing_last_error_reason() or b"").decode("utf-8", "replace")
        message = (_lib.licensing_last_error_message() or b"").decode("utf-8", "replace")
        raise LicensingError(Status(status), reason, message)


def _text(value: Optional[str]) -> Optional[bytes]:
    return None if value is None else value.encode("utf-8")


def _take_string(pointer: ctypes.c_void_p) -> str:
    """Copies a string the library returned, and frees it."""
    try:
        return ctypes.string_at(pointer.value).decode("utf-8") if pointer.value else ""
    finally:
        _lib.licensing_string_free(pointer)


def new_idempotency_key() -> str:
    """A new idempotency key for one use: keep it to send the same use again after a failure."""
    out = ctypes.c_void_p()
    _check(_lib.licensing_new_idempotency_key(ctypes.byref(out)))
    return _take_string(out)


@dataclass(frozen=True)
class MeterCount:
    """A meter's count in its current period (``period_end_ms`` 0: the count never resets)."""

    meter: str
    used: int
    """Counted in the period, overage included."""
    limit: int
    overage: int
    """Use allowed beyond the limit per period."""
    remaining: int
    """Left within the limit (0 once in overage)."""
    period_end_ms: int

    @classmethod
    def _from(cls, meter: str, count: _MeterCount) -> "MeterCount":
        return cls(meter, count.used, count.limit, count.overage, count.remaining, count.period_end_ms)


@dataclass(frozen=True)
class UseRecorded:
    """What the server made of a recorded use."""

    count: MeterCount
    """The meter after the use."""
    replayed: bool
    """The key was counted before (a retry): nothing was added."""


@dataclass(frozen=True)
class Certificate:
    """A verified certificate's fields (times in Unix milliseconds; ``expires_at_ms`` 0: never)."""

    license_id: str
    product_code: str
    modules: Tuple[str, ...]
    expires_at_ms: int
    valid_until_ms: int
    refresh_after_ms: int
    seats: int = 0
    """Machines the license may be activated on."""
    grace_ends_at_ms: int = 0
    """When the license's grace period ends (0: it has none)."""
    meters: Tuple[MeterCount, ...] = ()
    """Each meter's count when the certificate was signed."""

    def meter(self, code: str) -> Optional[MeterCount]:
        """The meter ``code`` as the certificate saw it, or None when it has no such meter."""
        return next((m for m in self.meters if m.meter == code), None)

    @classmethod
    def _take(cls, handle: ctypes.c_void_p) -> "Certificate":
        try:
            def string(field: str) -> str:
                out = ctypes.c_void_p()
                _check(getattr(_lib, f"licensing_certificate_{field}")(handle, ctypes.byref(out)))
                return _take_string(out)

            def instant(field: str) -> int:
                out = ctypes.c_int64()
                _check(getattr(_lib, f"licensing_certificate_{field}")(handle, ctypes.byref(out)))
                return out.value

            count = ctypes.c_size_t()
            _check(_lib.licensing_certificate_module_count(handle, ctypes.byref(count)))
            modules = []
            for i in range(count.value):
                out = ctypes.c_void_p()
                _check(_lib.licensing_certificate_module(handle, i, ctypes.byref(out)))
                modules.append(_take_string(out))
            seats = ctypes.c_int32()
            _check(_lib.licensing_certificate_seats(handle, ctypes.byref(seats)))
            _check(_lib.licensing_certificate_meter_count(handle, ctypes.byref(count)))
            meters = []
            for i in range(count.value):
                out = ctypes.c_void_p()
                _check(_lib.licensing_certificate_meter_code(handle, i, ctypes.byref(out)))
                code = _take_string(out)
                meter = _MeterCount()
                _check(_lib.licensing_certificate_meter(handle, code.encode("utf-8"), ctypes.byref(meter)))
                meters.append(MeterCount._from(code, meter))
            return cls(string("license_id"), string("product_code"), tuple(modules), instant("expires_at_ms"),
                       instant("valid_until_ms"), instant("refresh_after_ms"), seats.value,
                       instant("grace_ends_at_ms"), tuple(meters))
        finally:
            _lib.licensing_certificate_free(handle)


class Cancel:
    """Cancels a :meth:`Client.wait_for_seat` from another thread."""

    def __init__(self) -> None:
        self._handle = ctypes.c_void_p()
        _check(_lib.licensing_cancel_new(ctypes.byref(self._handle)))

    def cancel(self) -> None:
        _check(_lib.licensing_cancel_trigger(self._handle))

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is not None:
            _lib.licensing_cancel_free(self._handle)


SeatCallback = Callable[[SeatState, str], None]


class Seat:
    """A floating seat, heartbeating in the background until :meth:`checkin` or :meth:`close`.

    As a context manager it checks the seat in when the block ends.
    """

    def __init__(self, handle: ctypes.c_void_p, callback: object) -> None:
        self._handle: Optional[ctypes.c_void_p] = handle
        self._callback = callback  # the ctypes callback must outlive the handle

    @property
    def state(self) -> SeatState:
        state = ctypes.c_int()
        _check(_lib.licensing_seat_state(self._live(), ctypes.byref(state), None))
        return SeatState(state.value)

    @property
    def expires_at_ms(self) -> int:
        """When the current lease expires (0 when lost or released)."""
        state, expires = ctypes.c_int(), ctypes.c_int64()
        _check(_lib.licensing_seat_state(self._live(), ctypes.byref(state), ctypes.byref(expires)))
        return expires.value

    @property
    def lease_id(self) -> str:
        out = ctypes.c_void_p()
        _check(_lib.licensing_seat_lease_id(self._live(), ctypes.byref(out)))
        return _take_string(out)

    @property
    def lost_reason(self) -> str:
        """The server's reason when the seat is lost (e.g. ``LEASE_REVOKED``), else ``""``."""
        out = ctypes.c_void_p()
        _check(_lib.licensing_seat_lost_reason(self._live(), ctypes.byref(out), None))
        return _take_string(out)

    def checkin(self) -> bool:
        """Checks the seat in now; True when a live lease was released."""
        released = ctypes.c_bool()
        _check(_lib.licensing_seat_checkin(self._live(), ctypes.byref(released)))
        return released.value

    def close(self) -> None:
        """Checks the seat in (if still held) and frees it; after this the callback is never called."""
        handle, self._handle = self._handle, None
        if handle is not None:
            _lib.licensing_seat_free(handle)
        self._callback = None

    def _live(self) -> ctypes.c_void_p:
        if self._handle is None:
            raise LicensingError(Status.INVALID_HANDLE, "INVALID_HANDLE", "the seat was closed")
        return self._handle

    def __enter__(self) -> "Seat":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class NodeLockedLicense:
    """A node-locked license on this machine, its certificate kept in trusted storage."""

    def __init__(self, handle: ctypes.c_void_p) -> None:
        self._handle: Optional[ctypes.c_void_p] = handle

    @property
    def storage_path(self) -> str:
        out = ctypes.c_void_p()
        _check(_lib.licensing_license_storage_path(self._handle, ctypes.byref(out)))
        return _take_string(out)

    def activate(self, machine_name: str = "", product_version: str = "") -> Certificate:
        cert = ctypes.c_void_p()
        _check(_lib.licensing_license_activate(self._handle, _text(machine_name), None, _text(product_version),
                                               ctypes.byref(cert)))
        return Certificate._take(cert)

    def validate(self, modules: Sequence[str] = (), product_version: str = "") -> Tuple[Validity, Certificate]:
        """Online when the server answers, else offline from the stored certificate until its valid_until."""
        names = (_c * max(len(modules), 1))(*[m.encode("utf-8") for m in modules])
        validity, cert = ctypes.c_int(), ctypes.c_void_p()
        _check(_lib.licensing_license_validate(self._handle, names, len(modules), _text(product_version),
                                               ctypes.byref(validity), ctypes.byref(cert)))
        return Validity(validity.value), Certificate._take(cert)

    def refresh(self) -> Certificate:
        cert = ctypes.c_void_p()
        _check(_lib.licensing_license_refresh(self._handle, ctypes.byref(cert)))
        return Certificate._take(cert)

    def deactivate(self) -> None:
        _check(_lib.licensing_license_deactivate(self._handle))

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            _lib.licensing_license_free(handle)

    def __enter__(self) -> "NodeLockedLicense":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class BorrowedSeat:
    """A seat borrowed for offline use; save it, load it at each start, check it offline."""

    def __init__(self, client: "Client", handle: ctypes.c_void_p) -> None:
        self._client = client
        self._handle: Optional[ctypes.c_void_p] = handle

    @classmethod
    def load(cls, client: "Client", path: str) -> "BorrowedSeat":
        handle = ctypes.c_void_p()
        _check(_lib.licensing_borrowed_load(_text(path), ctypes.byref(handle)))
        return cls(client, handle)

    def save(self, path: str) -> None:
        _check(_lib.licensing_borrowed_save(self._handle, _text(path)))

    def check(self) -> int:
        """Checks the borrow offline; returns its end (Unix ms). Save the seat afterwards."""
        until = ctypes.c_int64()
        _check(_lib.licensing_borrowed_check(self._client._handle, self._handle, ctypes.byref(until)))
        return until.value

    def give_back(self) -> bool:
        """Returns the seat early; False when the borrow had ended already."""
        released = ctypes.c_bool()
        _check(_lib.licensing_borrowed_return(self._client._handle, self._handle, ctypes.byref(released)))
        return released.value

    def __del__(self) -> None:
        handle, self._handle = getattr(self, "_handle", None), None
        if handle is not None:
            _lib.licensing_borrowed_free(handle)


class Client:
    """A connection to the licensing server and the server's public key (base64) the product embeds."""

    def __init__(self, endpoint: str, public_key: str, *, ca_pem_path: Optional[str] = None,
                 cert_pem_path: Optional[str] = None, key_pem_path: Optional[str] = None) -> None:
        self._handle = ctypes.c_void_p()
        _check(_lib.licensing_client_new_tls(_text(endpoint), _text(public_key), _text(ca_pem_path),
                                             _text(cert_pem_path), _text(key_pem_path), ctypes.byref(self._handle)))

    @staticmethod
    def fingerprint() -> str:
        """This machine's fingerprint components, one ``name=value`` line each."""
        out = ctypes.c_void_p()
        _check(_lib.licensing_fingerprint(ctypes.byref(out)))
        return _take_string(out)

    def node_locked(self, key_or_id: str, *, password: Optional[str] = None,
                    storage_path: Optional[str] = None) -> NodeLockedLicense:
        """A license key, or a License ID with its activation ``password``."""
        handle = ctypes.c_void_p()
        _check(_lib.licensing_license_open(self._handle, _text(key_or_id), _text(password), _text(storage_path),
                                           ctypes.byref(handle)))
        return NodeLockedLicense(handle)

    @staticmethod
    def _options(feature: Optional[str], ttl_ms: int, on_change: Optional[SeatCallback]):
        callback = _CALLBACK()
        if on_change is not None:
            def trampoline(_user_data, state, reason):
                try:
                    on_change(SeatState(state), (reason or b"").decode("utf-8", "replace"))
                except Exception:  # an exception must not reach the library's thread
                    sys.excepthook(*sys.exc_info())
            callback = _CALLBACK(trampoline)
        options = _Options(_text(feature), None, None, None, ttl_ms, callback, None)
        return options, callback

    def checkout(self, license_key: str, *, password: Optional[str] = None, feature: Optional[str] = None,
                 ttl_ms: int = 0, on_change: Optional[SeatCallback] = None) -> Seat:
        """Takes a seat now (``LicensingError`` with reason ``NO_SEAT_AVAILABLE`` when none is free)."""
        options, callback = self._options(feature, ttl_ms, on_change)
        handle = ctypes.c_void_p()
        _check(_lib.licensing_seat_checkout(self._handle, _text(license_key), _text(password),
                                            ctypes.byref(options), ctypes.byref(handle)))
        return Seat(handle, callback)

    def wait_for_seat(self, license_key: str, timeout_s: float, *, password: Optional[str] = None,
                      feature: Optional[str] = None, ttl_ms: int = 0, on_change: Optional[SeatCallback] = None,
                      cancel: Optional[Cancel] = None) -> Seat:
        """Waits until a seat is free (status ``TIMEOUT`` when none came, ``CANCELLED`` when cancelled)."""
        options, callback = self._options(feature, ttl_ms, on_change)
        handle = ctypes.c_void_p()
        _check(_lib.licensing_seat_wait(self._handle, _text(license_key), _text(password), ctypes.byref(options),
                                        int(timeout_s * 1000), cancel._handle if cancel else None,
                                        ctypes.byref(handle)))
        return Seat(handle, callback)

    def borrow(self, license_key: str, period_s: int, *, password: Optional[str] = None) -> BorrowedSeat:
        handle = ctypes.c_void_p()
        _check(_lib.licensing_borrow(self._handle, _text(license_key), _text(password), None, period_s,
                                     ctypes.byref(handle)))
        return BorrowedSeat(self, handle)

    def record_usage(self, key_or_id: str, meter: str, amount: int, *, password: Optional[str] = None,
                     idempotency_key: Optional[str] = None) -> UseRecorded:
        """Records ``amount`` of ``meter`` under ``idempotency_key`` (None: a new key; pass one from
        :func:`new_idempotency_key` to send the same use again safely). Past the meter's limit and
        overage: ``LicensingError`` with reason ``METER_LIMIT_REACHED``, and nothing is counted."""
        count, replayed = _MeterCount(), ctypes.c_bool()
        _check(_lib.licensing_record_usage(self._handle, _text(key_or_id), _text(password), _text(meter), amount,
                                           _text(idempotency_key), ctypes.byref(count), ctypes.byref(replayed)))
        return UseRecorded(MeterCount._from(meter, count), replayed.value)

    def meter_usage(self, key_or_id: str, meter: str, *, password: Optional[str] = None) -> MeterCount:
        """The count of ``meter`` in its current period, from the server (``METER_NOT_FOUND`` when the
        license has no such meter)."""
        count = _MeterCount()
        _check(_lib.licensing_meter_usage(self._handle, _text(key_or_id), _text(password), _text(meter),
                                          ctypes.byref(count)))
        return MeterCount._from(meter, count)

    def close(self) -> None:
        handle, self._handle = getattr(self, "_handle", None), None
        if handle is not None:
            _lib.licensing_client_free(handle)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
