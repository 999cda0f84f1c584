"""The Python package against a real licensing server, run by tests/ffi.rs (the integration suite).

That test issues the licenses on a server, stops it, and hands its data directory and settings
over (LICENSING_SERVER_BIN, LICENSING_SERVER_ENV); the `server` fixture runs the server binary on
them, so these tests can stop and start it, even on another port.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import licensing
from licensing import LicensingError, SeatState, Status, Validity

PUBLIC_KEY = os.environ["LICENSING_PUBLIC_KEY"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self) -> None:
        self.port = free_port()
        self.process = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port=None) -> None:
        port = port or self.port
        env = dict(json.loads(os.environ["LICENSING_SERVER_ENV"]))
        env.update(PATH=os.environ.get("PATH", ""), LICENSING_LISTEN_ADDR=f"127.0.0.1:{port}")
        self.process = subprocess.Popen([os.environ["LICENSING_SERVER_BIN"]], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "the server exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


@pytest.fixture
def server():
    s = Server()
    s.start()
    yield s
    s.stop()


def wait_until(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_node_locked_activates_and_validates_offline_with_the_server_stopped(server, tmp_path):
    client = licensing.Client(server.url, PUBLIC_KEY)
    storage = str(tmp_path / "license.json")
    with client.node_locked(os.environ["NODE_LOCKED_ID"], password=os.environ["NODE_LOCKED_PASSWORD"],
                            storage_path=storage) as license:
        assert license.storage_path == storage
        cert = license.activate("python-test", "1.0")
        assert cert.license_id == os.environ["NODE_LOCKED_ID"] and cert.modules == ("render",)
        assert cert.seats == 2, "the license was issued with two seats"
        assert cert.valid_until_ms > time.time() * 1000
        validity, _ = license.validate(["render"], "1.0")
        assert validity is Validity.ONLINE
        with pytest.raises(LicensingError) as refused:
            license.validate(["export"])
        assert refused.value.status is Status.NOT_VALID
        assert refused.value.reason == "VALIDATION_CODE_MODULE_NOT_LICENSED"

        server.stop()
        validity, offline = license.validate(["render"])
        assert validity is Validity.OFFLINE and offline.license_id == cert.license_id
        with pytest.raises(LicensingError) as refused:
            license.validate(["export"])
        assert refused.value.status is Status.MODULE_NOT_LICENSED


def test_the_context_manager_holds_the_seat_past_several_ttls_and_checks_it_in(server):
    client = licensing.Client(server.url, PUBLIC_KEY)
    key = os.environ["SEAT_KEY"]
    with client.checkout(key, ttl_ms=1000) as seat:
        lease = seat.lease_id
        assert seat.state is SeatState.HELD and lease.startswith("lse_")
        time.sleep(3.5)
        assert seat.state is SeatState.HELD and seat.lease_id == lease
        assert seat.expires_at_ms > time.time() * 1000
        with pytest.raises(LicensingError) as taken:
            client.checkout(key)
        assert taken.value.reason == "NO_SEAT_AVAILABLE" and taken.value.status is Status.SERVER
    with client.checkout(key) as again:  # the block's end checked the seat in
        assert again.checkin() is True
        assert again.state is SeatState.RELEASED
    with pytest.raises(LicensingError) as closed:
        again.state
    assert closed.value.status is Status.INVALID_HANDLE


def test_a_seat_lost_while_the_server_was_stopped_is_reported(server):
    key = os.environ["LOST_KEY"]
    changes = []
    client = licensing.Client(server.url, PUBLIC_KEY)
    seat = client.checkout(key, ttl_ms=1000, on_change=lambda state, reason: changes.append((state, reason)))
    wait_until(lambda: (SeatState.HELD, "") in changes, 5, f"told held: {changes}")

    server.stop()
    wait_until(lambda: seat.state is SeatState.RECONNECTING, 10, "reconnecting")
    # The callback runs on the library's thread: it may tell a moment after the state changed.
    wait_until(lambda: (SeatState.RECONNECTING, "") in changes, 5, f"told reconnecting: {changes}")
    time.sleep(1.5)  # the lease runs out while the server is away
    # Meanwhile another product takes the seat (through another address this one does not know).
    elsewhere = free_port()
    server.start(elsewhere)
    other = licensing.Client(f"http://127.0.0.1:{elsewhere}", PUBLIC_KEY).checkout(key, ttl_ms=60_000)
    server.stop()
    server.start()
    wait_until(lambda: seat.state is SeatState.LOST, 20, f"lost: {changes}")
    assert seat.lost_reason == "NO_SEAT_AVAILABLE"
    wait_until(lambda: (SeatState.LOST, "NO_SEAT_AVAILABLE") in changes, 5, f"told lost: {changes}")
    seat.close()
    other.close()


def test_wait_for_seat_times_out_is_cancelled_and_gets_a_freed_seat(server):
    client = licensing.Client(server.url, PUBLIC_KEY)
    key = os.environ["SEAT_KEY"]
    holder = client.checkout(key)
    with pytest.raises(LicensingError) as timed_out:
        client.wait_for_seat(key, 0.5)
    assert timed_out.value.status is Status.TIMEOUT
    cancel = licensing.Cancel()
    threading.Timer(0.3, cancel.cancel).start()
    with pytest.raises(LicensingError) as cancelled:
        client.wait_for_seat(key, 20, cancel=cancel)
    assert cancelled.value.status is Status.CANCELLED
    threading.Timer(0.3, holder.close).start()
    with client.wait_for_seat(key, 10) as seat:
        assert seat.state is SeatState.HELD


def test_a_borrowed_seat_checks_offline_and_goes_back_early(server, tmp_path):
    client = licensing.Client(server.url, PUBLIC_KEY)
    path = str(tmp_path / "borrowed.json")
    client.borrow(os.environ["BORROW_KEY"], 3600).save(path)
    server.stop()
    borrowed = licensing.BorrowedSeat.load(client, path)
    assert borrowed.check() > time.time() * 1000 + 3000 * 1000
    borrowed.save(path)
    server.start()
    assert borrowed.give_back() is True


def test_metered_use_counts_once_per_key_up_to_the_limit(server, tmp_path):
    client = licensing.Client(server.url, PUBLIC_KEY)
    key = os.environ["METER_KEY"]  # node-locked, meter "exports": a limit of 3 a month
    use = licensing.new_idempotency_key()
    assert use.startswith("use_")
    first = client.record_usage(key, "exports", 2, idempotency_key=use)
    assert (first.count.used, first.count.remaining, first.count.limit, first.replayed) == (2, 1, 3, False)
    assert first.count.period_end_ms > time.time() * 1000
    retried = client.record_usage(key, "exports", 2, idempotency_key=use)  # the answer was lost
    assert (retried.count.used, retried.replayed) == (2, True)
    with pytest.raises(LicensingError) as over:
        client.record_usage(key, "exports", 2)
    assert over.value.status is Status.SERVER and over.value.reason == "METER_LIMIT_REACHED"
    assert "1 left" in over.value.message
    assert client.record_usage(key, "exports", 1).count.remaining == 0
    assert client.meter_usage(key, "exports").used == 3
    with pytest.raises(LicensingError) as unknown:
        client.meter_usage(key, "imports")
    assert unknown.value.reason == "METER_NOT_FOUND"

    with client.node_locked(key, storage_path=str(tmp_path / "license.json")) as license:
        cert = license.activate("python-meters", "1.0")
    exports = cert.meter("exports")
    assert exports is not None and (exports.used, exports.remaining) == (3, 0)
    assert cert.meter("imports") is None and len(cert.meters) == 1
    assert cert.grace_ends_at_ms == cert.expires_at_ms + 3 * 86_400_000, "issued with 3 days of grace"


def test_errors_are_exceptions_with_reasons(server):
    with pytest.raises(LicensingError) as bad_key:
        licensing.Client(server.url, "not a key")
    assert bad_key.value.status is Status.INVALID_ARGUMENT and bad_key.value.reason == "CONFIG"
    with pytest.raises(LicensingError) as unreachable:
        licensing.Client("http://127.0.0.1:1", PUBLIC_KEY).checkout("KEY")
    assert unreachable.value.status is Status.UNREACHABLE
    with pytest.raises(LicensingError) as unknown:
        licensing.Client(server.url, PUBLIC_KEY).checkout("NOT-A-KEY")
    assert unknown.value.status is Status.SERVER and unknown.value.reason
    assert "hostname=" in licensing.Client.fingerprint()


def test_the_example_holds_a_seat_and_gives_it_back_on_ctrl_c(server, tmp_path):
    env = dict(os.environ, LICENSING_URL=server.url, LICENSE_KEY=os.environ["SEAT_KEY"])
    # stderr goes to a file: a pipe nobody reads can fill up and stop the example mid-write.
    errors = open(tmp_path / "example.stderr", "w+")
    product = subprocess.Popen([sys.executable, "-X", "faulthandler", os.environ["PYTHON_EXAMPLE"]], env=env,
                               stdout=subprocess.PIPE, stderr=errors, text=True)
    lines = []
    held = threading.Event()

    def read_stdout():
        for line in product.stdout:
            lines.append(line)
            if line.startswith("SEAT HELD lse_"):
                held.set()

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()

    def what_it_said():
        errors.seek(0)
        return "".join(lines) + "\n" + errors.read()

    try:
        if not held.wait(60):
            product.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
            product.wait(10)
            raise AssertionError(f"the example did not take its seat within 60 s:\n{what_it_said()}")
        with pytest.raises(LicensingError):
            licensing.Client(server.url, PUBLIC_KEY).checkout(os.environ["SEAT_KEY"])
        product.send_signal(signal.SIGINT)
        try:
            product.wait(timeout=20)
        except subprocess.TimeoutExpired:
            product.send_signal(signal.SIGABRT)
            product.wait(10)
            raise AssertionError(f"the example did not end on SIGINT:\n{what_it_said()}")
        reader.join(10)
        assert "SEAT RELEASED True\n" in lines, what_it_said()
        assert product.returncode == 0, what_it_said()
    finally:
        product.kill()
        errors.close()
