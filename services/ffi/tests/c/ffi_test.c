/*
 * The C ABI as a C product uses it, driven by tests/ffi.rs (the integration suite), which starts
 * and stops the server between the steps. Built with -fsanitize=address (ASan and LeakSanitizer),
 * so a use of freed memory or a leak in the library or this program fails the test.
 *
 *   ffi_test misuse     NULL pointers, invalid UTF-8, freed handles, unreachable server, wrong key
 *   ffi_test activate   activate, validate online, certificate fields
 *   ffi_test offline    validate with the server stopped: offline from the stored certificate
 *   ffi_test floating   checkout with a callback, then commands on stdin: state, checkin, quit
 *   ffi_test wait       a seat that is taken: wait with a timeout, and a cancelled wait
 *   ffi_test borrow     borrow, save, load, check offline, return
 *   ffi_test meters     record use with idempotency keys up to the limit; the certificate's meters
 *   ffi_test refused    a call that cannot reach the server (e.g. over TLS with a wrong CA)
 *
 * Settings come from the environment: LICENSING_URL, LICENSING_PUBLIC_KEY, LICENSE_KEY,
 * LICENSE_ID, LICENSE_PASSWORD, LICENSE_STORAGE, BORROW_FILE; over TLS LICENSING_TLS_CA and,
 * for mutual TLS, LICENSING_TLS_CLIENT_CERT and LICENSING_TLS_CLIENT_KEY.
 */
#define _POSIX_C_SOURCE 200809L
#include "licensing.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int failures = 0;

#define CHECK(cond)                                                                              \
  do {                                                                                           \
    if (!(cond)) {                                                                               \
      printf("FAIL %s:%d: %s (last error: %s [%s])\n", __FILE__, __LINE__, #cond,                \
             licensing_last_error_message(), licensing_last_error_reason());                     \
      fflush(stdout);                                                                            \
      failures++;                                                                                \
    }                                                                                            \
  } while (0)

#define CHECK_OK(call) CHECK((call) == LICENSING_STATUS_OK)

static int reason_is(const char *expected) { return strcmp(licensing_last_error_reason(), expected) == 0; }

static const char *env(const char *name) {
  const char *v = getenv(name);
  if (!v) {
    printf("FAIL set %s\n", name);
    exit(2);
  }
  return v;
}

/* A client over TLS when LICENSING_TLS_CA names a CA file (with the product's own certificate
 * for mutual TLS when LICENSING_TLS_CLIENT_CERT and _KEY are set), else over plaintext. */
static LicensingClient *open_client(void) {
  LicensingClient *client = NULL;
  const char *ca = getenv("LICENSING_TLS_CA");
  if (ca) {
    CHECK_OK(licensing_client_new_tls(env("LICENSING_URL"), env("LICENSING_PUBLIC_KEY"), ca,
                                      getenv("LICENSING_TLS_CLIENT_CERT"), getenv("LICENSING_TLS_CLIENT_KEY"),
                                      &client));
  } else {
    CHECK_OK(licensing_client_new(env("LICENSING_URL"), env("LICENSING_PUBLIC_KEY"), &client));
  }
  return client;
}

static int misuse(void) {
  LicensingClient *client = NULL;
  /* NULL arguments: an error code and a reason, never a crash. */
  CHECK(licensing_client_new(NULL, "key", &client) == LICENSING_STATUS_INVALID_ARGUMENT);
  CHECK(reason_is("NULL_ARGUMENT"));
  CHECK(strstr(licensing_last_error_message(), "endpoint") != NULL);
  CHECK(licensing_client_new("http://127.0.0.1:1", env("LICENSING_PUBLIC_KEY"), NULL) ==
        LICENSING_STATUS_INVALID_ARGUMENT);
  /* Invalid UTF-8. */
  CHECK(licensing_client_new("http://\xff\xfe", env("LICENSING_PUBLIC_KEY"), &client) ==
        LICENSING_STATUS_INVALID_ARGUMENT);
  CHECK(reason_is("INVALID_UTF8"));
  /* A public key that is not one. */
  CHECK(licensing_client_new("http://127.0.0.1:1", "not a key", &client) == LICENSING_STATUS_INVALID_ARGUMENT);
  CHECK(reason_is("CONFIG"));
  CHECK(client == NULL);
  /* TLS files that are missing, or a certificate without its key. */
  CHECK(licensing_client_new_tls("https://localhost:1", env("LICENSING_PUBLIC_KEY"), "/nonexistent/ca.pem", NULL,
                                 NULL, &client) == LICENSING_STATUS_STORAGE);
  CHECK(reason_is("STORAGE") && strstr(licensing_last_error_message(), "/nonexistent/ca.pem") != NULL);
  CHECK(licensing_client_new_tls("https://localhost:1", env("LICENSING_PUBLIC_KEY"), NULL, "/nonexistent/cert.pem",
                                 NULL, &client) == LICENSING_STATUS_INVALID_ARGUMENT);
  CHECK(strstr(licensing_last_error_message(), "key_pem_path") != NULL);
  CHECK(client == NULL);
  /* A success clears the last error. */
  CHECK_OK(licensing_client_new("http://127.0.0.1:1", env("LICENSING_PUBLIC_KEY"), &client));
  CHECK(strcmp(licensing_last_error_reason(), "") == 0);

  /* An unreachable server: a checkout fails in bounded time with UNREACHABLE. */
  LicensingSeat *seat = NULL;
  CHECK(licensing_seat_checkout(client, "KEY", NULL, NULL, &seat) == LICENSING_STATUS_UNREACHABLE);
  CHECK(reason_is("UNREACHABLE"));
  CHECK(seat == NULL);
  /* Node-locked without a stored certificate and no server: NO_CERTIFICATE. */
  LicensingLicense *license = NULL;
  char path[256];
  snprintf(path, sizeof path, "%s.misuse", env("LICENSE_STORAGE"));
  CHECK_OK(licensing_license_open(client, "KEY", NULL, path, &license));
  LicensingValidity validity;
  CHECK(licensing_license_validate(license, NULL, 0, NULL, &validity, NULL) == LICENSING_STATUS_NO_CERTIFICATE);
  CHECK(licensing_license_validate(license, NULL, 2, NULL, &validity, NULL) == LICENSING_STATUS_INVALID_ARGUMENT);
  char *storage = NULL;
  CHECK_OK(licensing_license_storage_path(license, &storage));
  CHECK(storage && strcmp(storage, path) == 0);
  licensing_string_free(storage);

  /* A handle of the wrong kind, and handles used after free. */
  CHECK(licensing_license_deactivate((LicensingLicense *)client) == LICENSING_STATUS_INVALID_HANDLE);
  licensing_license_free(license);
  CHECK(licensing_license_deactivate(license) == LICENSING_STATUS_INVALID_HANDLE);
  CHECK(reason_is("INVALID_HANDLE"));
  licensing_license_free(license); /* a double free is reported, not a crash */
  CHECK(reason_is("INVALID_HANDLE"));
  licensing_client_free(client);
  CHECK(licensing_seat_checkout(client, "KEY", NULL, NULL, &seat) == LICENSING_STATUS_INVALID_HANDLE);
  licensing_client_free(NULL);
  licensing_string_free(NULL);
  CHECK(licensing_seat_state(NULL, NULL, NULL) == LICENSING_STATUS_INVALID_ARGUMENT);

  /* The real server with a wrong public key: the certificate does not verify. */
  LicensingClient *wrong = NULL;
  CHECK_OK(licensing_client_new(env("LICENSING_URL"), "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", &wrong));
  snprintf(path, sizeof path, "%s.wrong", env("LICENSE_STORAGE"));
  CHECK_OK(licensing_license_open(wrong, env("LICENSE_KEY"), NULL, path, &license));
  CHECK(licensing_license_activate(license, "pc", NULL, "1.0", NULL) == LICENSING_STATUS_BAD_SIGNATURE);
  CHECK(reason_is("BAD_CERTIFICATE"));
  licensing_license_free(license);
  licensing_client_free(wrong);

  /* Credentials the server does not know: its reason comes through. */
  LicensingClient *real = open_client();
  CHECK(licensing_seat_checkout(real, "NOT-A-KEY", NULL, NULL, &seat) == LICENSING_STATUS_SERVER);
  CHECK(strlen(licensing_last_error_reason()) > 0);
  printf("UNKNOWN KEY %s: %s\n", licensing_last_error_reason(), licensing_last_error_message());
  licensing_client_free(real);
  printf("MISUSE DONE\n");
  return failures;
}

static void print_certificate(LicensingCertificate *cert) {
  char *license_id = NULL;
  int64_t expires = -1, valid_until = -1;
  size_t modules = 0;
  int32_t seats = -1;
  CHECK_OK(licensing_certificate_license_id(cert, &license_id));
  CHECK_OK(licensing_certificate_seats(cert, &seats));
  CHECK_OK(licensing_certificate_expires_at_ms(cert, &expires));
  CHECK_OK(licensing_certificate_valid_until_ms(cert, &valid_until));
  CHECK_OK(licensing_certificate_module_count(cert, &modules));
  CHECK(valid_until > 0 && expires >= valid_until);
  printf("CERTIFICATE %s seats=%d modules=%zu", license_id ? license_id : "?", (int)seats, modules);
  for (size_t i = 0; i < modules; i++) {
    char *module = NULL;
    CHECK_OK(licensing_certificate_module(cert, i, &module));
    printf(" %s", module ? module : "?");
    licensing_string_free(module);
  }
  char *none = NULL;
  CHECK(licensing_certificate_module(cert, modules, &none) == LICENSING_STATUS_INVALID_ARGUMENT);
  printf("\n");
  licensing_string_free(license_id);
}

static LicensingLicense *open_license(LicensingClient *client) {
  LicensingLicense *license = NULL;
  /* By License ID and activation password, as a product that asks its user for them. */
  CHECK_OK(licensing_license_open(client, env("LICENSE_ID"), env("LICENSE_PASSWORD"), env("LICENSE_STORAGE"),
                                  &license));
  return license;
}

static int activate(void) {
  LicensingClient *client = open_client();
  LicensingLicense *license = open_license(client);
  LicensingCertificate *cert = NULL;
  CHECK_OK(licensing_license_activate(license, "ffi-test-pc", NULL, "1.0", &cert));
  print_certificate(cert);
  licensing_certificate_free(cert);

  const char *modules[] = {"render"};
  LicensingValidity validity = LICENSING_VALIDITY_OFFLINE;
  CHECK_OK(licensing_license_validate(license, modules, 1, "1.0", &validity, &cert));
  CHECK(validity == LICENSING_VALIDITY_ONLINE);
  licensing_certificate_free(cert);
  const char *unlicensed[] = {"export"};
  CHECK(licensing_license_validate(license, unlicensed, 1, NULL, &validity, NULL) == LICENSING_STATUS_NOT_VALID);
  CHECK(reason_is("VALIDATION_CODE_MODULE_NOT_LICENSED"));
  CHECK_OK(licensing_license_refresh(license, NULL));

  char *fingerprint = NULL;
  CHECK_OK(licensing_fingerprint(&fingerprint));
  CHECK(fingerprint && strstr(fingerprint, "hostname=") != NULL);
  licensing_string_free(fingerprint);
  licensing_license_free(license);
  licensing_client_free(client);
  printf("ACTIVATE DONE\n");
  return failures;
}

static int offline(void) {
  LicensingClient *client = open_client();
  LicensingLicense *license = open_license(client);
  const char *modules[] = {"render"};
  LicensingValidity validity = LICENSING_VALIDITY_ONLINE;
  LicensingCertificate *cert = NULL;
  CHECK_OK(licensing_license_validate(license, modules, 1, NULL, &validity, &cert));
  CHECK(validity == LICENSING_VALIDITY_OFFLINE);
  if (cert) print_certificate(cert);
  licensing_certificate_free(cert);
  const char *unlicensed[] = {"export"};
  CHECK(licensing_license_validate(license, unlicensed, 1, NULL, &validity, NULL) ==
        LICENSING_STATUS_MODULE_NOT_LICENSED);
  CHECK(licensing_license_deactivate(license) == LICENSING_STATUS_UNREACHABLE);
  licensing_license_free(license);
  licensing_client_free(client);
  printf("OFFLINE DONE\n");
  return failures;
}

static const char *state_name(LicensingSeatState state) {
  switch (state) {
    case LICENSING_SEAT_STATE_HELD: return "HELD";
    case LICENSING_SEAT_STATE_RECONNECTING: return "RECONNECTING";
    case LICENSING_SEAT_STATE_LOST: return "LOST";
    case LICENSING_SEAT_STATE_RELEASED: return "RELEASED";
  }
  return "?";
}

static void on_state(void *user_data, LicensingSeatState state, const char *reason) {
  int *calls = user_data;
  (*calls)++;
  printf("CALLBACK %s %s\n", state_name(state), reason);
  fflush(stdout);
}

static int floating(void) {
  LicensingClient *client = open_client();
  static int calls = 0;
  LicensingCheckoutOptions options = {0};
  options.ttl_ms = 1000;
  options.callback = on_state;
  options.user_data = &calls;
  LicensingSeat *seat = NULL;
  CHECK_OK(licensing_seat_checkout(client, env("LICENSE_KEY"), NULL, &options, &seat));
  char *lease = NULL;
  CHECK_OK(licensing_seat_lease_id(seat, &lease));
  printf("CHECKED OUT %s\n", lease ? lease : "?");
  fflush(stdout);
  licensing_string_free(lease);
  char line[64];
  while (fgets(line, sizeof line, stdin)) {
    if (strncmp(line, "state", 5) == 0) {
      LicensingSeatState state;
      int64_t expires = 0;
      CHECK_OK(licensing_seat_state(seat, &state, &expires));
      CHECK_OK(licensing_seat_lease_id(seat, &lease));
      printf("STATE %s %s\n", state_name(state), lease ? lease : "?");
      licensing_string_free(lease);
    } else if (strncmp(line, "checkin", 7) == 0) {
      bool released = false;
      CHECK_OK(licensing_seat_checkin(seat, &released));
      LicensingSeatState state;
      CHECK_OK(licensing_seat_state(seat, &state, NULL));
      printf("CHECKED IN %d %s\n", released, state_name(state));
    } else if (strncmp(line, "quit", 4) == 0) {
      break;
    }
    fflush(stdout);
  }
  licensing_seat_free(seat);
  CHECK(licensing_seat_state(seat, NULL, NULL) == LICENSING_STATUS_INVALID_ARGUMENT);
  licensing_client_free(client);
  printf("FLOATING DONE callbacks=%d\n", calls);
  return failures;
}

static void *cancel_soon(void *cancel) {
  struct timespec pause = {0, 300 * 1000 * 1000};
  nanosleep(&pause, NULL);
  licensing_cancel_trigger(cancel);
  return NULL;
}

static int wait_for_seat(void) {
  LicensingClient *client = open_client();
  LicensingSeat *holder = NULL, *waiter = NULL;
  CHECK_OK(licensing_seat_checkout(client, env("LICENSE_KEY"), NULL, NULL, &holder));
  CHECK(licensing_seat_checkout(client, env("LICENSE_KEY"), NULL, NULL, &waiter) == LICENSING_STATUS_SERVER);
  CHECK(reason_is("NO_SEAT_AVAILABLE"));
  CHECK(licensing_seat_wait(client, env("LICENSE_KEY"), NULL, NULL, 500, NULL, &waiter) == LICENSING_STATUS_TIMEOUT);
  printf("WAIT TIMED OUT %s\n", licensing_last_error_reason());
  LicensingCancel *cancel = NULL;
  CHECK_OK(licensing_cancel_new(&cancel));
  pthread_t thread;
  pthread_create(&thread, NULL, cancel_soon, cancel);
  CHECK(licensing_seat_wait(client, env("LICENSE_KEY"), NULL, NULL, 20000, cancel, &waiter) ==
        LICENSING_STATUS_CANCELLED);
  pthread_join(thread, NULL);
  licensing_cancel_free(cancel);
  CHECK(waiter == NULL);
  licensing_seat_free(holder); /* checks in: the seat is free again */
  CHECK_OK(licensing_seat_wait(client, env("LICENSE_KEY"), NULL, NULL, 5000, NULL, &waiter));
  licensing_seat_free(waiter);
  licensing_client_free(client);
  printf("WAIT DONE\n");
  return failures;
}

static int borrow(void) {
  LicensingClient *client = open_client();
  LicensingBorrowed *borrowed = NULL;
  CHECK_OK(licensing_borrow(client, env("LICENSE_KEY"), NULL, NULL, 3600, &borrowed));
  CHECK_OK(licensing_borrowed_save(borrowed, env("BORROW_FILE")));
  licensing_borrowed_free(borrowed);
  borrowed = NULL;
  CHECK_OK(licensing_borrowed_load(env("BORROW_FILE"), &borrowed));
  int64_t until = 0;
  CHECK_OK(licensing_borrowed_check(client, borrowed, &until));
  CHECK(until > 0);
  LicensingSeat *seat = NULL;
  CHECK(licensing_seat_checkout(client, env("LICENSE_KEY"), NULL, NULL, &seat) == LICENSING_STATUS_SERVER);
  CHECK(reason_is("NO_SEAT_AVAILABLE"));
  bool released = false;
  CHECK_OK(licensing_borrowed_return(client, borrowed, &released));
  CHECK(released);
  licensing_borrowed_free(borrowed);
  CHECK_OK(licensing_seat_checkout(client, env("LICENSE_KEY"), NULL, NULL, &seat));
  licensing_seat_free(seat);
  LicensingBorrowed *missing = NULL;
  CHECK(licensing_borrowed_load("/nonexistent/borrowed.json", &missing) == LICENSING_STATUS_STORAGE);
  licensing_client_free(client);
  printf("BORROW DONE\n");
  return failures;
}

static void print_count(const char *what, const LicensingMeterCount *count) {
  printf("%s used=%lld limit=%lld overage=%lld remaining=%lld resets=%d\n", what, (long long)count->used,
         (long long)count->limit, (long long)count->overage, (long long)count->remaining, count->period_end_ms > 0);
}

/* LICENSE_KEY (and LICENSE_ID/LICENSE_PASSWORD) name a node-locked license with the meter
 * `exports`: a limit of 10 a month, no overage. */
static int meters(void) {
  LicensingClient *client = open_client();
  const char *key = env("LICENSE_KEY");
  char *use = NULL;
  CHECK_OK(licensing_new_idempotency_key(&use));
  CHECK(use && strncmp(use, "use_", 4) == 0);
  LicensingMeterCount count = {0};
  bool replayed = true;
  CHECK_OK(licensing_record_usage(client, key, NULL, "exports", 4, use, &count, &replayed));
  CHECK(count.used == 4 && count.remaining == 6 && count.limit == 10 && !replayed);
  print_count("RECORDED", &count);
  /* The answer was lost: the same use sent again with its key is counted once. */
  CHECK_OK(licensing_record_usage(client, key, NULL, "exports", 4, use, &count, &replayed));
  CHECK(count.used == 4 && replayed);
  printf("REPLAYED %d used=%lld\n", replayed, (long long)count.used);
  /* The same key for another use is refused. */
  CHECK(licensing_record_usage(client, key, NULL, "exports", 5, use, NULL, NULL) == LICENSING_STATUS_SERVER);
  CHECK(reason_is("IDEMPOTENCY_KEY_REUSED"));
  licensing_string_free(use);
  /* NULL key: the library makes one up. By License ID and password too. */
  CHECK_OK(licensing_record_usage(client, env("LICENSE_ID"), env("LICENSE_PASSWORD"), "exports", 6, NULL, &count,
                                  NULL));
  CHECK(count.used == 10 && count.remaining == 0);
  /* Past the limit: refused, nothing counted. */
  CHECK(licensing_record_usage(client, key, NULL, "exports", 1, NULL, &count, NULL) == LICENSING_STATUS_SERVER);
  CHECK(reason_is("METER_LIMIT_REACHED"));
  printf("LIMIT %s: %s\n", licensing_last_error_reason(), licensing_last_error_message());
  CHECK_OK(licensing_meter_usage(client, key, NULL, "exports", &count));
  CHECK(count.used == 10 && count.period_end_ms > 0);
  print_count("USAGE", &count);
  /* Meters the license does not have, and bad arguments. */
  CHECK(licensing_record_usage(client, key, NULL, "imports", 1, NULL, NULL, NULL) == LICENSING_STATUS_SERVER);
  CHECK(reason_is("METER_NOT_FOUND"));
  CHECK(licensing_meter_usage(client, key, NULL, "imports", &count) == LICENSING_STATUS_SERVER);
  CHECK(reason_is("METER_NOT_FOUND") && strstr(licensing_last_error_message(), "exports") != NULL);
  CHECK(licensing_record_usage(client, key, NULL, NULL, 1, NULL, NULL, NULL) == LICENSING_STATUS_INVALID_ARGUMENT);
  CHECK(reason_is("NULL_ARGUMENT"));
  CHECK(licensing_meter_usage(client, key, NULL, "exports", NULL) == LICENSING_STATUS_INVALID_ARGUMENT);
  CHECK(licensing_new_idempotency_key(NULL) == LICENSING_STATUS_INVALID_ARGUMENT);

  /* The certificate carries each meter's count at signing, and the grace period's end. */
  LicensingLicense *license = open_license(client);
  LicensingCertificate *cert = NULL;
  CHECK_OK(licensing_license_activate(license, "ffi-meters-pc", NULL, "1.0", &cert));
  size_t meter_count = 0;
  CHECK_OK(licensing_certificate_meter_count(cert, &meter_count));
  CHECK(meter_count == 1);
  char *code = NULL;
  CHECK_OK(licensing_certificate_meter_code(cert, 0, &code));
  CHECK(code && strcmp(code, "exports") == 0);
  licensing_string_free(code);
  CHECK(licensing_certificate_meter_code(cert, 1, &code) == LICENSING_STATUS_INVALID_ARGUMENT);
  LicensingMeterCount signed_count = {0};
  CHECK_OK(licensing_certificate_meter(cert, "exports", &signed_count));
  CHECK(signed_count.used == 10 && signed_count.remaining == 0);
  print_count("CERTIFICATE METER", &signed_count);
  CHECK(licensing_certificate_meter(cert, "imports", &signed_count) == LICENSING_STATUS_INVALID_ARGUMENT);
  CHECK(reason_is("METER_NOT_FOUND"));
  int64_t grace_end = 0, expires = 0;
  CHECK_OK(licensing_certificate_grace_ends_at_ms(cert, &grace_end));
  CHECK_OK(licensing_certificate_expires_at_ms(cert, &expires));
  printf("GRACE %lld EXPIRES %lld\n", (long long)grace_end, (long long)expires);
  licensing_certificate_free(cert);
  licensing_license_free(license);
  licensing_client_free(client);
  printf("METERS DONE\n");
  return failures;
}

/* A node-locked activation that cannot reach the server: an error code and a reason, no crash. */
static int refused(void) {
  LicensingClient *client = open_client();
  LicensingLicense *license = open_license(client);
  LicensingCertificate *cert = NULL;
  LicensingStatus status = licensing_license_activate(license, "ffi-test-pc", NULL, "1.0", &cert);
  CHECK(status == LICENSING_STATUS_UNREACHABLE);
  CHECK(cert == NULL);
  printf("REFUSED %d %s: %s\n", (int)status, licensing_last_error_reason(), licensing_last_error_message());
  licensing_license_free(license);
  licensing_client_free(client);
  return failures;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  const char *mode = argc > 1 ? argv[1] : "";
  printf("licensing %s\n", licensing_version());
  int failed;
  if (strcmp(mode, "misuse") == 0) failed = misuse();
  else if (strcmp(mode, "activate") == 0) failed = activate();
  else if (strcmp(mode, "offline") == 0) failed = offline();
  else if (strcmp(mode, "floating") == 0) failed = floating();
  else if (strcmp(mode, "wait") == 0) failed = wait_for_seat();
  else if (strcmp(mode, "borrow") == 0) failed = borrow();
  else if (strcmp(mode, "meters") == 0) failed = meters();
  else if (strcmp(mode, "refused") == 0) failed = refused();
  else {
    printf("usage: ffi_test misuse|activate|offline|floating|wait|borrow|meters|refused\n");
    return 2;
  }
  printf("%d FAILURES\n", failed);
  return failed ? 1 : 0;
}
