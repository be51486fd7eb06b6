"""Which URLs a job's input may be fetched from: http(s) only, and never a loopback,
link-local (the cloud metadata service), private or otherwise special address unless an
allow-list names it. The controller checks each URL at submission; the pilot checks the address
it resolves to and every redirect again at fetch time, resolving each host name once and
connecting to the very address it checked (the original name still goes in the Host header
and TLS's server name and certificate check), so a name that resolves to an allowed address
at the check and to a private one a moment later (DNS rebinding) gets nothing.

Standard library only: the controller imports this module too (one rule, one place)."""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from typing import IO, Any

# names that always mean this machine or a cloud metadata service
SPECIAL_NAMES = frozenset({"localhost", "localhost.localdomain", "metadata",
                           "metadata.google.internal", "instance-data"})


class UrlRefused(ValueError):
    """This URL may not be used as an input."""


def _allowed(host: str, addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
             allow: Iterable[str]) -> bool:
    for a in allow:
        if a.lower() == host.lower():
            return True
        if addr is not None:
            try:
                if addr in ipaddress.ip_network(a, strict=False):
                    return True
            except ValueError:
                continue
    return False


def _special(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return not addr.is_global or addr.is_multicast


def check_url(url: str, allow: Iterable[str] = (),
              resolve: Callable[[str], list[str]] | None = None) -> str:
    """Return the URL if it may be fetched; else raise UrlRefused saying why. With `resolve`
    (host -> addresses), every address the name resolves to is checked too."""
    allow = list(allow)
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (a port out of range raises here)
    except ValueError as e:
        raise UrlRefused(f"not a valid URL: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise UrlRefused(f"only http and https URLs, not {parts.scheme or 'no scheme'!r}")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UrlRefused("the URL has no host")
    if parts.username or parts.password:
        raise UrlRefused("no credentials in input URLs")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addrs = [literal]
    else:
        if host.lower() in SPECIAL_NAMES or host.lower().endswith(".localhost"):
            if not _allowed(host, None, allow):
                raise UrlRefused(f"{host} is this machine or a metadata service")
        addrs = [ipaddress.ip_address(a.split("%")[0]) for a in (resolve(host) if resolve
                                                                  else [])]
    for a in addrs:
        if _special(a) and not _allowed(host, a, allow):
            raise UrlRefused(f"{host} is a loopback, link-local, private or metadata address "
                             f"({a}); allow it with input_url_allow")
    return url


def resolve_host(host: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as e:
        raise UrlRefused(f"cannot resolve {host}: {e}") from None
    return sorted({str(i[4][0]) for i in infos})


class _Recheck(urllib.request.HTTPRedirectHandler):
    def __init__(self, allow: list[str]) -> None:
        self.allow = allow

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int,
                         msg: str, headers: Any, newurl: str) -> urllib.request.Request | None:
        # a redirect is checked like the URL: its form here, its address when it is opened
        check_url(newurl, self.allow)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def pinned_address(url: str, allow: list[str],
                   resolve: Callable[[str], list[str]]) -> str:
    """Resolve the URL's host once, check every address it gave, and answer the one to
    connect to (a literal address is its own)."""
    host = (urllib.parse.urlsplit(url).hostname or "").rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    addrs = resolve(host)
    if not addrs:
        raise UrlRefused(f"{host} resolves to no address")
    check_url(url, allow, lambda h: addrs)
    return addrs[0].split("%")[0]


class _Pinned:
    """http(s) opening that connects to the address `pinned_address` checked, not to
    whatever the name resolves to by then."""

    allow: list[str]
    resolve: Callable[[str], list[str]]

    def _pinned_open(self, factory: type[http.client.HTTPConnection],
                     req: urllib.request.Request, **kw: Any) -> Any:
        addr = pinned_address(req.full_url, self.allow, self.resolve)

        def connection(host: str, **args: Any) -> http.client.HTTPConnection:
            conn = factory(host, **args, **kw)

            def to_checked(where: tuple[str, int], *rest: Any) -> socket.socket:
                return socket.create_connection((addr, where[1]), *rest)

            conn._create_connection = to_checked  # type: ignore[attr-defined]
            return conn

        return self.do_open(connection, req)  # type: ignore[attr-defined]


class _PinnedHTTP(_Pinned, urllib.request.HTTPHandler):
    def __init__(self, allow: list[str], resolve: Callable[[str], list[str]]) -> None:
        super().__init__()
        self.allow, self.resolve = allow, resolve

    def http_open(self, req: urllib.request.Request) -> Any:
        return self._pinned_open(http.client.HTTPConnection, req)


class _PinnedHTTPS(_Pinned, urllib.request.HTTPSHandler):
    def __init__(self, allow: list[str], resolve: Callable[[str], list[str]],
                 context: ssl.SSLContext | None) -> None:
        super().__init__(context=context)
        self.allow, self.resolve = allow, resolve
        self.tls = context

    def https_open(self, req: urllib.request.Request) -> Any:
        return self._pinned_open(http.client.HTTPSConnection, req, context=self.tls)


def open_url(url: str, allow: Iterable[str] = (), timeout: float = 60, *,
             resolve: Callable[[str], list[str]] = resolve_host,
             context: ssl.SSLContext | None = None) -> IO[bytes]:
    """Open an input URL after checking it (and each redirect) against the rules: each
    host name resolved once (`resolve`), connected to at the address that was checked. No
    proxy from the environment (a proxy would resolve the name itself). `context`: TLS
    settings (default: the system's CAs, the host name checked)."""
    allow = list(allow)
    check_url(url, allow)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _Recheck(allow),
                                         _PinnedHTTP(allow, resolve),
                                         _PinnedHTTPS(allow, resolve, context))
    resp: IO[bytes] = opener.open(url, timeout=timeout)
    return resp
