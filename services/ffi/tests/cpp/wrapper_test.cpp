// licensing.hpp against a real server (tests/ffi.rs): a Seat's destructor checks in, errors are
// exceptions carrying the reason, and a node-locked license activates, validates, deactivates.
// Metered use is recorded once per idempotency key up to the limit. LICENSING_URL,
// LICENSING_PUBLIC_KEY, SEAT_KEY (1 seat), LICENSE_ID, LICENSE_PASSWORD, LICENSE_STORAGE and
// METER_KEY (node-locked, meter "exports" with a limit of 3) come from the environment.
#include "licensing.hpp"

#include <atomic>
#include <cstdlib>
#include <iostream>

static int failures = 0;
#define CHECK(cond)                                                             \
  do {                                                                          \
    if (!(cond)) {                                                              \
      std::cout << "FAIL " << __LINE__ << ": " << #cond << std::endl;           \
      failures++;                                                               \
    }                                                                           \
  } while (0)

static std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

template <typename F>
static std::string reason_of(F&& f) {
  try {
    f();
  } catch (const licensing::Error& e) {
    return e.reason();
  }
  return "no error";
}

int main() {
  licensing::Client client{env("LICENSING_URL"), env("LICENSING_PUBLIC_KEY")};
  const std::string key = env("SEAT_KEY");
  std::atomic<int> changes{0};
  {
    licensing::CheckoutOptions options;
    options.ttl = std::chrono::milliseconds(1000);
    licensing::Seat seat = client.checkout(key, options, [&](licensing::SeatState, const std::string&) { changes++; });
    CHECK(seat.state() == licensing::SeatState::Held);
    CHECK(seat.lease_id().rfind("lse_", 0) == 0);
    CHECK(reason_of([&] { client.checkout(key); }) == "NO_SEAT_AVAILABLE");
    licensing::Seat moved = std::move(seat);  // the moved-from seat checks nothing in
    CHECK(moved.state() == licensing::SeatState::Held);
  }  // ~Seat checks in
  {
    licensing::Seat again = client.checkout(key);
    CHECK(again.checkin());
    CHECK(again.state() == licensing::SeatState::Released);
  }
  CHECK(changes.load() >= 1);
  CHECK(reason_of([] { licensing::Client bad{"http://127.0.0.1:1", "not a key"}; }) == "CONFIG");

  auto license =
      licensing::NodeLockedLicense::with_password(client, env("LICENSE_ID"), env("LICENSE_PASSWORD"), env("LICENSE_STORAGE"));
  licensing::Certificate cert = license.activate("wrapper-test", "1.0");
  CHECK(cert.license_id == env("LICENSE_ID"));
  CHECK(cert.modules.size() == 1 && cert.modules[0] == "render");
  CHECK(!license.validate({"render"}).offline);
  CHECK(reason_of([&] { license.validate({"export"}); }) == "VALIDATION_CODE_MODULE_NOT_LICENSED");
  CHECK(license.refresh().valid_until_ms >= cert.valid_until_ms);
  license.deactivate();
  CHECK(reason_of([&] { license.validate({"render"}); }) != "no error");
  CHECK(!licensing::Client::fingerprint().empty());
  CHECK(cert.meters.empty() && cert.meter("exports") == nullptr && cert.grace_ends_at_ms == 0);

  const std::string meter_key = env("METER_KEY");
  const std::string use = licensing::new_idempotency_key();
  licensing::UseRecorded first = client.record_usage(meter_key, "exports", 2, use);
  CHECK(first.count.meter == "exports" && first.count.used == 2 && first.count.remaining == 1 && !first.replayed);
  CHECK(first.count.limit == 3 && first.count.period_end_ms > 0);
  licensing::UseRecorded again = client.record_usage(meter_key, "exports", 2, use);  // a retry: counted once
  CHECK(again.replayed && again.count.used == 2);
  CHECK(reason_of([&] { client.record_usage(meter_key, "exports", 2); }) == "METER_LIMIT_REACHED");
  CHECK(client.meter_usage(meter_key, "exports").used == 2);
  CHECK(reason_of([&] { client.meter_usage(meter_key, "imports"); }) == "METER_NOT_FOUND");
  licensing::NodeLockedLicense metered{client, meter_key, env("LICENSE_STORAGE") + ".meters"};
  licensing::Certificate signed_cert = metered.activate("wrapper-test", "1.0");
  const licensing::MeterCount* exports = signed_cert.meter("exports");
  CHECK(exports != nullptr && exports->used == 2 && exports->remaining == 1);
  std::cout << failures << " FAILURES" << std::endl;
  return failures ? 1 : 0;
}
