/*
 * A C product that takes a floating seat, holds it (the library heartbeats in the background)
 * and gives it back on Ctrl-C.
 *
 *   cc -I services/ffi/include examples/c/floating_seat.c -L target/debug -llicensing_ffi -o floating_seat
 *   LICENSING_URL=http://127.0.0.1:50051 LICENSING_PUBLIC_KEY=... LICENSE_KEY=... ./floating_seat
 */
#define _POSIX_C_SOURCE 200809L
#include "licensing.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static volatile sig_atomic_t stop = 0;
static void on_signal(int sig) { (void)sig; stop = 1; }

/* Called on a library thread when the seat's state changes. */
static void on_state(void *user_data, LicensingSeatState state, const char *reason) {
  (void)user_data;
  static const char *names[] = {"HELD", "RECONNECTING", "LOST", "RELEASED"};
  printf("SEAT %s %s\n", names[state], reason);
  fflush(stdout);
}

int main(void) {
  const char *url = getenv("LICENSING_URL"), *key = getenv("LICENSING_PUBLIC_KEY"), *license = getenv("LICENSE_KEY");
  if (!url || !key || !license) {
    fprintf(stderr, "set LICENSING_URL, LICENSING_PUBLIC_KEY and LICENSE_KEY\n");
    return 2;
  }
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);

  LicensingClient *client = NULL;
  LicensingSeat *seat = NULL;
  LicensingCheckoutOptions options = {0};
  options.callback = on_state;
  if (licensing_client_new(url, key, &client) != LICENSING_STATUS_OK ||
      licensing_seat_checkout(client, license, NULL, &options, &seat) != LICENSING_STATUS_OK) {
    fprintf(stderr, "no seat: %s (%s)\n", licensing_last_error_message(), licensing_last_error_reason());
    licensing_client_free(client);
    return 3;
  }
  while (!stop) sleep(1); /* the product's work goes here */

  bool released = false;
  licensing_seat_checkin(seat, &released);
  printf("SEAT RELEASED %s\n", released ? "true" : "false");
  licensing_seat_free(seat);
  licensing_client_free(client);
  return 0;
}
