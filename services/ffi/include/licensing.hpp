// licensing.hpp: a header-only C++17 wrapper of licensing.h (the licensing client library's C
// ABI). Handles are owned by RAII objects; a failed call throws licensing::Error, which carries
// the status and the stable reason (e.g. "NO_SEAT_AVAILABLE"). Link with -llicensing_ffi.
//
//   licensing::Client client{"http://licensing.example:50051", public_key};
//   licensing::Seat seat = client.checkout(license_key);   // heartbeats in the background
//   ...                                                     // ~Seat checks the seat in
#ifndef LICENSING_HPP
#define LICENSING_HPP

#include "licensing.h"

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace licensing {

// A failed call: what() is the message, reason() the stable reason, status() the C status.
class Error : public std::runtime_error {
 public:
  Error(LicensingStatus status, std::string reason, const std::string& message)
      : std::runtime_error(message), status_(status), reason_(std::move(reason)) {}
  LicensingStatus status() const noexcept { return status_; }
  const std::string& reason() const noexcept { return reason_; }

 private:
  LicensingStatus status_;
  std::string reason_;
};

namespace detail {
inline void check(LicensingStatus status) {
  if (status != LICENSING_STATUS_OK) throw Error(status, licensing_last_error_reason(), licensing_last_error_message());
}
// Takes a string the library returned: copies it and frees the original.
inline std::string take(char* text) {
  std::string copy = text ? text : "";
  licensing_string_free(text);
  return copy;
}
inline const char* or_null(const std::string& text) { return text.empty() ? nullptr : text.c_str(); }
}  // namespace detail

// A meter's count in its current period. period_end_ms is 0 when the count never resets.
struct MeterCount {
  std::string meter;                // its code, e.g. "exports"
  std::int64_t used = 0;            // counted in the period, overage included
  std::int64_t limit = 0;           // allowed per period
  std::int64_t overage = 0;         // allowed beyond the limit per period
  std::int64_t remaining = 0;       // left within the limit (0 once in overage)
  std::int64_t period_end_ms = 0;   // when the count starts again; 0: never

  static MeterCount from(std::string meter, const LicensingMeterCount& c) {
    return MeterCount{std::move(meter), c.used, c.limit, c.overage, c.remaining, c.period_end_ms};
  }
};

// What the server made of a recorded use.
struct UseRecorded {
  MeterCount count;       // the meter after the use
  bool replayed = false;  // the key was counted before: nothing was added
};

// A new idempotency key for one use: keep it to send the same use again after a failure.
inline std::string new_idempotency_key() {
  char* text = nullptr;
  detail::check(licensing_new_idempotency_key(&text));
  return detail::take(text);
}

// A certificate's fields, copied out of the library.
struct Certificate {
  std::string license_id;
  std::string product_code;
  std::vector<std::string> modules;
  std::int64_t expires_at_ms = 0;  // 0: the license never expires
  std::int64_t valid_until_ms = 0;  // offline use allowed until then
  std::int64_t refresh_after_ms = 0;
  std::int32_t seats = 0;  // machines the license may be activated on
  std::int64_t grace_ends_at_ms = 0;  // the grace period's end; 0: the license has none
  std::vector<MeterCount> meters;     // each meter's count when the certificate was signed

  // The meter `code` as the certificate saw it; nullptr when it has no such meter.
  const MeterCount* meter(const std::string& code) const {
    for (const auto& m : meters)
      if (m.meter == code) return &m;
    return nullptr;
  }

  // Copies the fields of `handle` and frees it.
  static Certificate take(LicensingCertificate* handle) {
    std::unique_ptr<LicensingCertificate, void (*)(LicensingCertificate*)> owned(handle, licensing_certificate_free);
    Certificate c;
    char* text = nullptr;
    detail::check(licensing_certificate_license_id(handle, &text));
    c.license_id = detail::take(text);
    detail::check(licensing_certificate_product_code(handle, &text));
    c.product_code = detail::take(text);
    detail::check(licensing_certificate_expires_at_ms(handle, &c.expires_at_ms));
    detail::check(licensing_certificate_valid_until_ms(handle, &c.valid_until_ms));
    detail::check(licensing_certificate_refresh_after_ms(handle, &c.refresh_after_ms));
    detail::check(licensing_certificate_seats(handle, &c.seats));
    detail::check(licensing_certificate_grace_ends_at_ms(handle, &c.grace_ends_at_ms));
    std::size_t count = 0;
    detail::check(licensing_certificate_module_count(handle, &count));
    for (std::size_t i = 0; i < count; ++i) {
      detail::check(licensing_certificate_module(handle, i, &text));
      c.modules.push_back(detail::take(text));
    }
    detail::check(licensing_certificate_meter_count(handle, &count));
    for (std::size_t i = 0; i < count; ++i) {
      detail::check(licensing_certificate_meter_code(handle, i, &text));
      std::string code = detail::take(text);
      LicensingMeterCount m{};
      detail::check(licensing_certificate_meter(handle, code.c_str(), &m));
      c.meters.push_back(MeterCount::from(std::move(code), m));
    }
    return c;
  }
};

// How a seat is checked out; empty strings mean the library's defaults.
struct CheckoutOptions {
  std::string feature, user, host, client_instance_id;
  std::chrono::milliseconds ttl{0};  // 0: 60 s
};

enum class SeatState { Held = LICENSING_SEAT_STATE_HELD, Reconnecting = LICENSING_SEAT_STATE_RECONNECTING,
                       Lost = LICENSING_SEAT_STATE_LOST, Released = LICENSING_SEAT_STATE_RELEASED };

// Called on a library thread when the seat's state changes; `reason` is set when lost.
using SeatCallback = std::function<void(SeatState state, const std::string& reason)>;

// A floating seat held while this object lives: the destructor checks it in. Move-only.
class Seat {
 public:
  Seat(Seat&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)), callback_(std::move(other.callback_)) {}
  Seat& operator=(Seat&& other) noexcept {
    if (this != &other) {
      reset();
      handle_ = std::exchange(other.handle_, nullptr);
      callback_ = std::move(other.callback_);
    }
    return *this;
  }
  Seat(const Seat&) = delete;
  Seat& operator=(const Seat&) = delete;
  ~Seat() { reset(); }

  SeatState state() const {
    LicensingSeatState state;
    detail::check(licensing_seat_state(handle_, &state, nullptr));
    return static_cast<SeatState>(state);
  }
  std::string lease_id() const {
    char* text = nullptr;
    detail::check(licensing_seat_lease_id(handle_, &text));
    return detail::take(text);
  }
  // Checks in now; true when a live lease was released. The destructor then has nothing to do.
  bool checkin() {
    bool released = false;
    detail::check(licensing_seat_checkin(handle_, &released));
    return released;
  }

 private:
  friend class Client;
  Seat(LicensingSeat* handle, std::unique_ptr<SeatCallback> callback)
      : handle_(handle), callback_(std::move(callback)) {}
  // Frees the seat first (after which the callback is never called), then the callback.
  void reset() noexcept {
    if (handle_) licensing_seat_free(handle_);
    handle_ = nullptr;
    callback_.reset();
  }
  static void trampoline(void* user_data, LicensingSeatState state, const char* reason) {
    auto* callback = static_cast<SeatCallback*>(user_data);
    try {
      (*callback)(static_cast<SeatState>(state), reason ? reason : "");
    } catch (...) {
      // An exception must not unwind into the library's thread.
    }
  }

  LicensingSeat* handle_;
  std::unique_ptr<SeatCallback> callback_;
};

// A connection to the licensing server and the public key the product embeds. Copies share it.
class Client {
 public:
  Client(const std::string& endpoint, const std::string& public_key) {
    LicensingClient* handle = nullptr;
    detail::check(licensing_client_new(endpoint.c_str(), public_key.c_str(), &handle));
    handle_.reset(handle, licensing_client_free);
  }
  // Over TLS: the CA's PEM file and, for mutual TLS, the product's certificate and key files.
  Client(const std::string& endpoint, const std::string& public_key, const std::string& ca_pem_path,
         const std::string& cert_pem_path = "", const std::string& key_pem_path = "") {
    LicensingClient* handle = nullptr;
    detail::check(licensing_client_new_tls(endpoint.c_str(), public_key.c_str(), detail::or_null(ca_pem_path),
                                           detail::or_null(cert_pem_path), detail::or_null(key_pem_path), &handle));
    handle_.reset(handle, licensing_client_free);
  }

  LicensingClient* get() const noexcept { return handle_.get(); }

  // Takes a seat now (Error with reason NO_SEAT_AVAILABLE when none is free).
  Seat checkout(const std::string& license_key, const CheckoutOptions& options = {},
                SeatCallback on_change = nullptr) const {
    auto [c_options, callback] = prepare(options, std::move(on_change));
    LicensingSeat* seat = nullptr;
    detail::check(licensing_seat_checkout(get(), license_key.c_str(), nullptr, &c_options, &seat));
    return Seat(seat, std::move(callback));
  }

  // Waits until a seat is free, at most `timeout` (Error with status TIMEOUT when none came).
  Seat wait_for_seat(const std::string& license_key, std::chrono::milliseconds timeout,
                     const CheckoutOptions& options = {}, SeatCallback on_change = nullptr) const {
    auto [c_options, callback] = prepare(options, std::move(on_change));
    LicensingSeat* seat = nullptr;
    detail::check(licensing_seat_wait(get(), license_key.c_str(), nullptr, &c_options,
                                      static_cast<std::uint32_t>(timeout.count()), nullptr, &seat));
    return Seat(seat, std::move(callback));
  }

  // Records `amount` of `meter` for the license under `idempotency_key` (empty: a new key; use
  // new_idempotency_key() to send the same use again safely). Past the meter's limit and
  // overage: Error with reason METER_LIMIT_REACHED, and nothing is counted.
  UseRecorded record_usage(const std::string& license_key, const std::string& meter, std::int64_t amount,
                           const std::string& idempotency_key = "") const {
    LicensingMeterCount count{};
    bool replayed = false;
    detail::check(licensing_record_usage(get(), license_key.c_str(), nullptr, meter.c_str(), amount,
                                         detail::or_null(idempotency_key), &count, &replayed));
    return UseRecorded{MeterCount::from(meter, count), replayed};
  }

  // The count of `meter` in its current period, from the server (Error METER_NOT_FOUND when the
  // license has no such meter).
  MeterCount meter_usage(const std::string& license_key, const std::string& meter) const {
    LicensingMeterCount count{};
    detail::check(licensing_meter_usage(get(), license_key.c_str(), nullptr, meter.c_str(), &count));
    return MeterCount::from(meter, count);
  }

  // This machine's fingerprint components, one "name=value" line each.
  static std::string fingerprint() {
    char* text = nullptr;
    detail::check(licensing_fingerprint(&text));
    return detail::take(text);
  }

 private:
  static std::pair<LicensingCheckoutOptions, std::unique_ptr<SeatCallback>> prepare(const CheckoutOptions& o,
                                                                                    SeatCallback on_change) {
    LicensingCheckoutOptions c{};
    c.feature = detail::or_null(o.feature);
    c.user = detail::or_null(o.user);
    c.host = detail::or_null(o.host);
    c.client_instance_id = detail::or_null(o.client_instance_id);
    c.ttl_ms = static_cast<std::uint32_t>(o.ttl.count());
    std::unique_ptr<SeatCallback> callback;
    if (on_change) {
      callback = std::make_unique<SeatCallback>(std::move(on_change));
      c.callback = &Seat::trampoline;
      c.user_data = callback.get();
    }
    return {c, std::move(callback)};
  }

  std::shared_ptr<LicensingClient> handle_;
};

// What validate() established: online, or offline from the stored certificate.
struct Validation {
  bool offline = false;
  Certificate certificate;
};

// A node-locked license on this machine, with its certificate in trusted storage.
class NodeLockedLicense {
 public:
  // By license key; `storage_path` empty: the user's data directory.
  NodeLockedLicense(const Client& client, const std::string& license_key, const std::string& storage_path = "")
      : NodeLockedLicense(client, license_key, nullptr, storage_path) {}
  // By License ID and activation password.
  static NodeLockedLicense with_password(const Client& client, const std::string& license_id,
                                         const std::string& password, const std::string& storage_path = "") {
    return NodeLockedLicense(client, license_id, password.c_str(), storage_path);
  }

  Certificate activate(const std::string& machine_name = "", const std::string& product_version = "") {
    LicensingCertificate* cert = nullptr;
    detail::check(licensing_license_activate(handle_.get(), detail::or_null(machine_name), nullptr,
                                             detail::or_null(product_version), &cert));
    return Certificate::take(cert);
  }
  // Online when the server answers, else offline until the certificate's valid_until.
  Validation validate(const std::vector<std::string>& modules = {}, const std::string& product_version = "") {
    std::vector<const char*> names;
    for (const auto& m : modules) names.push_back(m.c_str());
    LicensingValidity validity = LICENSING_VALIDITY_ONLINE;
    LicensingCertificate* cert = nullptr;
    detail::check(licensing_license_validate(handle_.get(), names.data(), names.size(),
                                             detail::or_null(product_version), &validity, &cert));
    return Validation{validity == LICENSING_VALIDITY_OFFLINE, Certificate::take(cert)};
  }
  Certificate refresh() {
    LicensingCertificate* cert = nullptr;
    detail::check(licensing_license_refresh(handle_.get(), &cert));
    return Certificate::take(cert);
  }
  void deactivate() { detail::check(licensing_license_deactivate(handle_.get())); }
  std::string storage_path() const {
    char* text = nullptr;
    detail::check(licensing_license_storage_path(handle_.get(), &text));
    return detail::take(text);
  }

 private:
  NodeLockedLicense(const Client& client, const std::string& key_or_id, const char* password,
                    const std::string& storage_path) {
    LicensingLicense* handle = nullptr;
    detail::check(licensing_license_open(client.get(), key_or_id.c_str(), password, detail::or_null(storage_path),
                                         &handle));
    handle_.reset(handle, licensing_license_free);
  }
  std::shared_ptr<LicensingLicense> handle_;
};

}  // namespace licensing

#endif  // LICENSING_HPP
