"""The controller's frame size limit (`IPController.max_message_size`, ZMQ_MAXMSGSIZE on every
socket engines and clients connect to): an oversized frame from any peer, signed or not, drops
that peer's connection before the frame is read, so it costs the controller no memory; everything
under the limit, and every other peer, is served as before."""

import json

import numpy as np
import zmq
import zmq.utils.monitor

from conftest import Engines, connect, wait_for
from util_db import tree_memory

LIMIT = 1 << 20  # 1 MiB


def disconnected(monitor):
    """True once the monitored socket reports that its peer dropped the connection."""
    while monitor.poll(0):
        ev = zmq.utils.monitor.recv_monitor_message(monitor)
        if ev["event"] == zmq.EVENT_DISCONNECTED:
            return True
    return False


def test_an_oversized_frame_drops_its_peer_and_costs_no_memory(make_controller):
    ctl = make_controller(f"--IPController.max_message_size={LIMIT}", "--ping=500")
    eng = Engines(ctl, 1)
    try:
        rc = connect(ctl, 1, eng)
        info = json.loads(ctl.file("client").read_text())
        ctx = zmq.Context.instance()
        before = tree_memory(ctl.proc.pid)[0]
        for port in ("mux", "task", "registration"):
            s = ctx.socket(zmq.DEALER)
            mon = s.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            s.connect(f"{info['interface']}:{info[port]}")
            # an unsigned message whose one buffer is 64 times the limit
            s.send_multipart([b"<IDS|MSG>", b"", b"{}", b"{}", b"{}", b"{}", bytes(64 * LIMIT)])
            wait_for(lambda: disconnected(mon), timeout=30, what=f"the {port} socket to drop the peer")
            s.disable_monitor()
            mon.close(0)
            s.close(0)
        grown = tree_memory(ctl.proc.pid)[0] - before
        assert grown < 32 * LIMIT, f"the controller grew by {grown} bytes for frames it refused"
        # the real client and engine are still served, with buffers under the limit
        view = rc[:]
        arr = np.arange(LIMIT // 16, dtype=np.int64)  # half the limit
        view.push({"a": arr}, block=True)
        assert (view.pull("a", block=True)[0] == arr).all()
        assert rc.load_balanced_view().apply_sync(lambda x: int(x.sum()), arr) == int(arr.sum())
        rc.close()
    finally:
        eng.stop()
