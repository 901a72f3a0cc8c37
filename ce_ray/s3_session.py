"""The HTTP session of ce-ray's S3 client (`storage.filesystem`): aiobotocore's, with no wait left without a bound.

aiohttp, under aiobotocore and s3fs, bounds a connect (`connect_timeout`) and each read of an answer
(`read_timeout`, its clock started once the request's body is sent), and nothing else:
- botocore asks every upload to wait for `100 Continue` (`Expect: 100-continue`) before its body, and aiohttp
  waits for it with no timeout. A store that stopped answering (a paused or overloaded process, a gateway that
  took the connection and went quiet) held each write forever: a score job's writes until Ray Data's
  no-progress timeout failed the job 31 minutes later naming no store, and a training checkpoint, `_SUCCESS` or
  a trained model's upload with no end at all (moto on 127.0.0.1 under SIGSTOP, 2026-12-01). Here the header is
  dropped: the body goes at once, and the wait for the answer is `read_timeout`'s. (Signatures do not cover it.)
- a body that the store stops reading blocks its write once the sockets' buffers are full (2-6 MB on a
  loopback), with no timeout. A body of `BOUNDED_BODY_BYTES` or more must be sent, and answered, within
  `connect_timeout + read_timeout` and a second per `MIN_UPLOAD_BYTES_PER_S` of it; smaller ones fit in the
  buffers, and their answer is `read_timeout`'s.
A request that runs out of time fails as a read timeout naming the endpoint's URL, and botocore and s3fs retry it
as they retry any other.
"""

from __future__ import annotations

import asyncio

from aiobotocore.httpsession import AIOHTTPSession
from botocore.exceptions import ReadTimeoutError

BOUNDED_BODY_BYTES = 1 << 20
MIN_UPLOAD_BYTES_PER_S = 256 << 10  # a 50 MiB part (s3fs's) may take 200 s beyond the timeouts


class BoundedSession(AIOHTTPSession):
    async def send(self, request):
        if "Expect" in request.headers:
            del request.headers["Expect"]
        length = int(request.headers.get("Content-Length") or 0)
        if length < BOUNDED_BODY_BYTES:
            return await super().send(request)
        timeout = self._timeout
        limit = (timeout.sock_connect or 0) + (timeout.sock_read or 0) + length / MIN_UPLOAD_BYTES_PER_S
        try:
            return await asyncio.wait_for(super().send(request), limit)
        except asyncio.TimeoutError as e:
            raise ReadTimeoutError(endpoint_url=request.url, error=e) from None
