"""The API key of `facecomp serve`: a bearer token on every ``/v1`` route, and who may skip it.

With a key set, ``/v1/model`` and ``/v1/complete`` answer 401 unless the request carries
``Authorization: Bearer <key>``. Left open: the page (``/``, static HTML that holds nothing and asks for
the key itself), ``/healthz`` (load balancers and orchestrators probe it without credentials), and the
API's description (``/docs``, ``/redoc``, ``/openapi.json`` and their assets), which a browser loads by
navigation, where no header can be added; its Swagger UI has an "Authorize" button for the key.

Without a key the server must stay on loopback: :func:`server_key` refuses any other host unless ``--insecure``.
The key travels in a header in clear text, so beyond localhost it belongs behind a TLS reverse proxy.
"""

from __future__ import annotations

import ipaddress
import os
import secrets

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

API_KEY_ENV = "FACECOMP_API_KEY"
MIN_KEY_CHARS = 16  # a shorter key can be guessed over the network; token_urlsafe(32) gives 43
KEY_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def check_api_key(key: str) -> None:
    """Refuse a key too short to resist guessing, or one a browser cannot put in a header (non-ASCII, spaces)."""
    if len(key) < MIN_KEY_CHARS or not all("!" <= c <= "~" for c in key):
        raise ValueError(f"the API key must be at least {MIN_KEY_CHARS} printable ASCII characters without "
                         f"spaces; make one with {KEY_HINT}")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine. A name other than localhost could resolve
    anywhere, so it counts as exposed."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def server_key(given: str | None, host: str, insecure: bool = False) -> str | None:
    """The key a server bound to ``host`` wants: ``given`` (``--api-key``), else $FACECOMP_API_KEY (empty =
    none), checked. Without one, a host other than loopback is refused unless ``insecure``."""
    key = given or os.environ.get(API_KEY_ENV) or None
    if key is not None:
        check_api_key(key)
    elif not is_loopback(host) and not insecure:
        raise ValueError(f"--host {host} is reachable from other machines: set an API key "
                         f"(--api-key or ${API_KEY_ENV}) or pass --insecure to serve it open")
    return key


def keys_match(given: str, expected: str) -> bool:
    """Constant-time, so the answer's timing says nothing about how much of the key was right. Starlette
    decodes headers as latin-1, so any header value encodes back; the expected key is ASCII (check_api_key)."""
    return secrets.compare_digest(given.encode("latin-1"), expected.encode("ascii"))


def require_key(api_key: str):
    """A FastAPI dependency answering 401 (``WWW-Authenticate: Bearer``) unless the request carries ``api_key``.

    FastAPI's HTTPBearer reads the header and documents the scheme in the OpenAPI; auto_error is off so
    that a missing and a wrong key get the same 401, in the API's one-line error body."""
    check_api_key(api_key)
    bearer = HTTPBearer(auto_error=False, scheme_name="APIKey",
                        description="the key `facecomp serve` was started with (--api-key or $FACECOMP_API_KEY)")

    # FastAPI's dependency injection reads Depends(...) from the default: the idiom, not a shared default
    async def _require_key(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        if credentials is None or not keys_match(credentials.credentials, api_key):
            raise HTTPException(401, "missing or wrong API key: send the header Authorization: Bearer <key>",
                                headers={"WWW-Authenticate": "Bearer"})

    return _require_key
