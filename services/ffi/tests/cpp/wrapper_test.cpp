// licensing.hpp against a real server (tests/ffi.rs): a Seat's destructor checks in, errors are
// exceptions carrying the reason, and a node-locked license activates, validates, deactivates.
// LICENSING_URL, LICENSING_PUBLIC_KEY, SEAT_KEY (1 seat), LICENSE_ID, LICENSE_PASSWORD,
// LICENSE_STORAGE come from the environment.
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
  std::cout << failures << " FAILURES" << std::endl;
  return failures ? 1 : 0;
}
