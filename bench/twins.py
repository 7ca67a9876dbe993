"""Serve N Modbus TCP twins x P float32 points in one process (run apart from the daemon being measured)."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from drivers.modbus.config import ModbusPoint
from drivers.modbus.simulator import ModbusTwin


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--points", type=int, default=100)
    args = ap.parse_args()
    points = [
        ModbusPoint.model_validate(
            {
                "id": f"p{i}",
                "address": 2 * i,
                "type": "float32",
                "quantity": "current",
                "unit": "A",
                "sim": {"min": 0, "max": 80},
            }
        )
        for i in range(args.points)
    ]
    twins = [ModbusTwin(points, units=[1], port=0, update_interval=1.0, seed=i) for i in range(args.devices)]
    for t in twins:
        await t.start()
    print(json.dumps([t.port for t in twins]), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for t in twins:
        await t.stop()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
    sys.exit(0)
