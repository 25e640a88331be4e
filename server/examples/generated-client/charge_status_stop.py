"""Charge, status and stop through a client generated from the gateway's OpenAPI document.

Generate the client first (see the server README), then:

    PYTHONPATH=<dir holding pilekit_client> python3 charge_status_stop.py \
        http://127.0.0.1:7055 <api-key> 82210225000520 1

A pile must stand behind the device ID (pile-sim, for instance). The script starts a charge by
time, waits for the gateway to report it charging, stops it, waits for the settlement and
checks it: completed, end reason 3 (remote stop). It exits non-zero on any surprise.
"""

import sys
import time
import uuid

from pilekit_client import AuthenticatedClient
from pilekit_client.api.devices import charge, device, stop
from pilekit_client.api.orders import order
from pilekit_client.models import (
    ChargeRequest,
    ChargeRequestChargeMode,
    OrderStatus,
    StopRequest,
    StopStatus,
)


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def wait_order(client, order_no, done, timeout_s=30.0):
    """Polls the order until `done(view)` holds; returns the view."""
    deadline = time.monotonic() + timeout_s
    while True:
        env = order.sync(order_no, client=client)
        view = getattr(env, "data", None)
        if view is not None and done(view):
            return view
        if time.monotonic() > deadline:
            fail(f"order {order_no} did not get there in {timeout_s} s: {view}")
        time.sleep(0.2)


def main():
    if len(sys.argv) != 5:
        fail("usage: charge_status_stop.py BASE_URL API_KEY DEVICE_ID PORT_NO")
    base_url, api_key, device_id, port_no = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    client = AuthenticatedClient(
        base_url=base_url, token=api_key, prefix="", auth_header_name="X-Api-Key"
    )
    order_no = f"gen-{uuid.uuid4().hex[:12]}"

    # Charge: 10 minutes by time, 500 fen prepaid, 150 + 50 fen per kWh.
    request = ChargeRequest(
        port_no=port_no,
        charge_mode=ChargeRequestChargeMode.VALUE_1,
        duration=600,
        amount=500,
        price_per_kwh=150,
        service_fee=50,
        order_no=order_no,
    )
    env = charge.sync(device_id, client=client, body=request)
    if env is None or env.code != 0 or env.data.status != OrderStatus.PENDING:
        fail(f"charge answered {env}")
    print(f"charge: order {env.data.order_no} on {env.data.device_id} port {env.data.port_no}: {env.data.status.value}")

    # Status: the order, and the device's port.
    view = wait_order(client, order_no, lambda v: v.status == OrderStatus.CHARGING)
    print(f"status: order {order_no} {view.status.value} since {view.started_at}")
    dev = device.sync(device_id, client=client)
    port = next(p for p in dev.data.ports if p.port_no == port_no)
    print(f"status: device {device_id} online={dev.data.online}, port {port_no} {port.status.value}, order {port.order_no}")
    if port.order_no != order_no:
        fail(f"port {port_no} shows order {port.order_no}, not {order_no}")

    # Stop: the answer says the stop is on its way; the settlement follows.
    env = stop.sync(device_id, client=client, body=StopRequest(port_no=port_no, order_no=order_no))
    if env is None or env.code != 0 or env.data.status != StopStatus.STOPPING:
        fail(f"stop answered {env}")
    print(f"stop: order {env.data.order_no}: {env.data.status.value}")
    done = wait_order(client, order_no, lambda v: v.status != OrderStatus.CHARGING)
    if done.status != OrderStatus.COMPLETED or done.end_reason != 3:
        fail(f"settled as {done.status.value}, end reason {done.end_reason}")
    print(
        f"settled: {done.status.value}, end reason {done.end_reason} ({done.end_reason_name}), "
        f"{done.duration_sec} s, {done.total_kwh} kWh, {done.final_amount} fen"
    )
    print("generated client: charge, status and stop OK")


if __name__ == "__main__":
    main()
