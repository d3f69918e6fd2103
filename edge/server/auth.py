"""Bearer-token authentication as a pure ASGI middleware (streamed responses pass through it
untouched). The key is compared in constant time, so response timing does not reveal how much
of a guess was right."""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send

from edge.server.errors import AuthenticationError

# The chat page holds no secret (it asks for the key) and a health probe carries no key.
PUBLIC = frozenset({"/", "/health"})


class BearerAuth:
    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.key = api_key.encode("utf-8") if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.key is None or scope["type"] != "http" or scope["path"] in PUBLIC:
            await self.app(scope, receive, send)
            return
        if self.authorized(dict(scope["headers"]).get(b"authorization", b"")):
            await self.app(scope, receive, send)
            return
        error = AuthenticationError(
            "missing or wrong API key: send the header 'Authorization: Bearer KEY' with the "
            "key given to edge serve --api-key"
        )
        body = json.dumps(error.body()).encode("utf-8")
        await send(
            {
                "type": "http.response.start",
                "status": error.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="edge"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def authorized(self, header: bytes) -> bool:
        scheme, _, token = header.partition(b" ")
        # compare_digest on the whole token, whatever its length: no early exit
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key or b"")
