"""gurux's own client, driven over a real socket to the twin the way gurux's examples do it.

The twin's independent peer: what it sends is encoded by gurux, what it gets back is decoded by
gurux, so a twin (or client) bug that our own codec shares cannot hide.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from gurux_dlms import GXByteBuffer, GXDLMSClient, GXReplyData
from gurux_dlms.enums import Authentication, InterfaceType, Security
from gurux_dlms.secure import GXDLMSSecureClient

from tests.dlms.util import KEYS


class GuruxSession:
    """gurux's client driven over a socket, the way its examples do it."""

    def __init__(self, client: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.c = client
        self.r = reader
        self.w = writer

    async def _rt(self, msg: Any, reply: Any) -> None:
        self.w.write(bytes(msg))
        await self.w.drain()
        buf = GXByteBuffer()
        while not self.c.getData(buf, reply, None):
            data = await asyncio.wait_for(self.r.read(4096), 3)
            if not data:
                raise ConnectionError("the twin closed the connection")
            buf.set(data)

    async def request(self, msgs: Any) -> Any:
        reply = GXReplyData()
        if isinstance(msgs, bytes | bytearray):
            msgs = [msgs]
        for m in msgs:
            await self._rt(m, reply)
        while reply.isMoreData():
            await self._rt(self.c.receiverReady(reply), reply)
        return reply

    async def open(self, hdlc: bool) -> None:
        if hdlc:
            reply = GXReplyData()
            await self._rt(self.c.snrmRequest(), reply)
            self.c.parseUAResponse(reply.data)
        reply = await self.request(self.c.aarqRequest())
        self.c.parseAareResponse(reply.data)
        if self.c.getIsAuthenticationRequired():
            reply = await self.request(self.c.getApplicationAssociationRequest())
            self.c.parseApplicationAssociationResponse(reply.data)

    async def close(self, hdlc: bool) -> None:
        await self.request(self.c.releaseRequest())
        if hdlc:
            reply = GXReplyData()
            await self._rt(self.c.disconnectRequest(), reply)
        self.w.close()


async def open_session(
    port: int, transport: Literal["wrapper", "hdlc"] = "wrapper", auth: str = "none"
) -> GuruxSession:
    """A gurux client associated with the twin on 127.0.0.1:`port`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    session = GuruxSession(gurux_client(transport, auth), reader, writer)
    await session.open(transport == "hdlc")
    return session


def gurux_client(transport: Literal["wrapper", "hdlc"], auth: str) -> Any:
    it = InterfaceType.HDLC if transport == "hdlc" else InterfaceType.WRAPPER
    server = GXDLMSClient.getServerAddress(1, 17) if transport == "hdlc" else 1
    if auth == "none":
        return GXDLMSSecureClient(True, 16, server, Authentication.NONE, None, it)
    if auth == "low":
        return GXDLMSSecureClient(True, 1, server, Authentication.LOW, "12345678", it)
    c = GXDLMSSecureClient(True, 1, server, Authentication.HIGH_GMAC, None, it)
    c.ciphering.security = Security.AUTHENTICATION_ENCRYPTION
    c.ciphering.systemTitle = bytearray(KEYS.system_title)
    c.ciphering.blockCipherKey = bytearray(KEYS.encryption_key)
    c.ciphering.authenticationKey = bytearray(KEYS.authentication_key)
    return c
