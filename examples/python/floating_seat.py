"""A Python product that takes a floating seat, holds it (heartbeats run in the background) and
gives it back on Ctrl-C.

    pip install services/ffi/python   # with liblicensing_ffi bundled, see docs/sdk.md
    LICENSING_URL=http://127.0.0.1:50051 LICENSING_PUBLIC_KEY=... LICENSE_KEY=... python floating_seat.py
"""
import os
import signal
import sys
import threading

import licensing

stop = threading.Event()
said = threading.Lock()  # the state callback runs on the library's thread: one line at a time


def say(*words):
    with said:
        print(*words, flush=True)


signal.signal(signal.SIGINT, lambda *_: stop.set())
signal.signal(signal.SIGTERM, lambda *_: stop.set())

client = licensing.Client(os.environ["LICENSING_URL"], os.environ["LICENSING_PUBLIC_KEY"])
try:
    seat = client.checkout(os.environ["LICENSE_KEY"],
                           on_change=lambda state, reason: say("SEAT", state.name, reason))
except licensing.LicensingError as e:
    sys.exit(f"no seat: {e}")
with seat:
    say("SEAT HELD", seat.lease_id)
    while not stop.wait(0.2):  # the product's work goes here
        if seat.state is licensing.SeatState.LOST:
            sys.exit(f"seat lost: {seat.lost_reason}")
    say("SEAT RELEASED", seat.checkin())
