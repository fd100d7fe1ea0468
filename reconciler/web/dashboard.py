"""The dashboard: one page, its script and its style, shipped in the package (nothing is fetched
from elsewhere at run time), that renders the API's documents and follows ``/api/v1/stream``.

The page itself holds no data and no secret: every figure comes from the API, with the same
access rules (on a non-loopback listener the script sends the bearer token a person pasted
once, kept in the tab's ``sessionStorage``; there are no cookies, so no request can ride on
them). The script writes what agents printed as text only, never as HTML, and the Content
Security Policy forbids inline script and every other origin, so even markup that slipped
through could not run.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

# The page's own paths (the script draws the view each names); everything else is the API's.
PAGES = ("/", "/tasks/{name}", "/lanes", "/plan", "/events")
STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class Assets:
    """The page and its files, read from the package once."""

    def __init__(self) -> None:
        folder = resources.files("reconciler.web") / "static"
        self.files = {name: (folder / name).read_bytes() for name in (*STATIC, "index.html")}

    def page(self, _request: Request) -> Response:
        return Response(
            self.files["index.html"],
            headers=SECURITY_HEADERS,
            media_type="text/html; charset=utf-8",
        )

    def static(self, request: Request) -> Response:
        name = request.path_params["file"]
        if name not in STATIC:
            return Response(b"not found\n", 404, media_type="text/plain")
        return Response(self.files[name], headers=SECURITY_HEADERS, media_type=STATIC[name])
