"""The reflected CRC-16 family that serial protocols use (Modbus RTU, HDLC's FCS)."""

from __future__ import annotations

from collections.abc import Callable

Data = bytes | bytearray | memoryview


def crc16_reflected(poly: int, init: int = 0xFFFF, xorout: int = 0) -> Callable[[Data], int]:
    """A table-driven CRC-16 over `data` for a reflected polynomial (0xA001 Modbus, 0x8408 X.25)."""
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)

    def crc16(data: Data) -> int:
        crc = init
        for b in data:
            crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
        return crc ^ xorout

    crc16.__doc__ = f"CRC-16, reflected polynomial {poly:#06x}, init {init:#06x}, xorout {xorout:#06x}."
    return crc16
