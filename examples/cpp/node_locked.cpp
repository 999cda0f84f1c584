// A C++ product with a node-locked license: activates this machine on its first start,
// validates at each start (offline from the stored certificate while the server is down) and
// runs until Ctrl-C. DEACTIVATE=1 hands the activation back on the way out.
//
//   c++ -std=c++17 -I services/ffi/include examples/cpp/node_locked.cpp -L target/debug -llicensing_ffi
//   LICENSING_URL=http://127.0.0.1:50051 LICENSING_PUBLIC_KEY=... LICENSE_KEY=... ./a.out
#include "licensing.hpp"

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <unistd.h>

static volatile std::sig_atomic_t stop = 0;

static std::string env(const char* name, const char* fallback = nullptr) {
  const char* value = std::getenv(name);
  if (!value && !fallback) throw std::runtime_error(std::string("set ") + name);
  return value ? value : fallback;
}

int main() {
  std::signal(SIGINT, [](int) { stop = 1; });
  std::signal(SIGTERM, [](int) { stop = 1; });
  try {
    licensing::Client client{env("LICENSING_URL"), env("LICENSING_PUBLIC_KEY")};
    licensing::NodeLockedLicense license{client, env("LICENSE_KEY"), env("LICENSE_STORAGE", "")};
    if (!std::filesystem::exists(license.storage_path())) {
      license.activate("", "1.0");
      std::cout << "ACTIVATED" << std::endl;
    }
    licensing::Validation v = license.validate({"render"}, "1.0");
    std::cout << "LICENSE VALID " << (v.offline ? "offline " : "online ") << v.certificate.license_id
              << " until " << v.certificate.valid_until_ms << std::endl;
    while (!stop) sleep(1);  // the product's work goes here
    if (env("DEACTIVATE", "") == "1") {
      license.deactivate();
      std::cout << "DEACTIVATED" << std::endl;
    }
    std::cout << "BYE" << std::endl;
  } catch (const licensing::Error& e) {
    std::cerr << "license refused (" << e.reason() << "): " << e.what() << std::endl;
    return 3;
  }
  return 0;
}
