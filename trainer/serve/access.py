"""Who may use a server that others can reach: API keys for /v1, logins for the page, a warning when neither is set.

    python app.py --host 0.0.0.0 --api_key_file keys.txt --auth_file logins.txt
    API_KEY=key1,key2 GRADIO_AUTH=dokter:rahasia python app.py --host 0.0.0.0

- Keys come from --api_key (several comma-separated; else $API_KEY) and --api_key_file (one per line); logins,
  USER:PASSWORD, from --auth (repeatable; else $GRADIO_AUTH) and --auth_file (one per line). In files, blank lines
  and lines starting with # are skipped. A bad entry is an AccessError naming the flag, file and line, never the
  secret.
- Once read, keys and passwords are kept only as SHA-256 digests, compared with hmac.compare_digest against every
  key (so the time taken says nothing about which key, or which part of a guess, was right). Nothing here logs,
  echoes or repr()s a secret.
- /v1 (openai_api.py) wants `Authorization: Bearer KEY`; the page and its Gradio API want Gradio's login
  (`gradio_kwargs()`), and the MCP server, which Gradio mounts outside its login, HTTP Basic auth with the same
  USER:PASSWORD (`LoginRequired`).
- On a Hugging Face Space (SPACE_ID set) the page is public by design and /v1 is served only with keys. Elsewhere a
  server bound beyond loopback with neither keys nor logins gets `warning()`, which app.py prints.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from starlette.middleware import Middleware
from starlette.responses import JSONResponse

API_KEY_VARIABLE = "API_KEY"
AUTH_VARIABLE = "GRADIO_AUTH"
MCP_PATH = "/gradio_api/mcp"  # Gradio's MCP server: /sse, /messages/, /schema, and streamable HTTP at the path itself
LOGIN_MESSAGE = ("Masuk untuk memakai alpaca-medis (login). Jawabannya bukan nasihat medis "
                 "(<em>not medical advice</em>).")


class AccessError(ValueError):
    """A key or login that cannot be used: the message names the flag, the file and the line, never the secret."""


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


_NO_USER = _digest(secrets.token_hex(32))  # what an unknown user's password is compared with: the same work


class APIKeys:
    """The keys /v1 accepts, as digests; `match(key)` is the index of the key given (a client's identity), or None."""

    def __init__(self, keys: Sequence[str]):
        self._digests = tuple(_digest(k) for k in keys)

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:
        return f"APIKeys({_count(len(self), 'key')})"

    def match(self, key: str) -> int | None:
        given, found = _digest(key), None
        for i, digest in enumerate(self._digests):  # every key, whichever matches
            if hmac.compare_digest(given, digest) and found is None:
                found = i
        return found


class Logins:
    """The page's users and their passwords' digests. `check(user, password)` is what Gradio's `auth=` calls."""

    def __init__(self, logins: Sequence[tuple[str, str]]):
        self._digests = {user: _digest(password) for user, password in logins}

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:
        return f"Logins({_count(len(self), 'user')})"

    def check(self, user: str, password: str) -> bool:
        match = hmac.compare_digest(_digest(password), self._digests.get(user, _NO_USER))
        return match and user in self._digests

    def check_basic(self, authorization: str | None) -> bool:
        """Whether an `Authorization: Basic base64(USER:PASSWORD)` header holds a login."""
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, colon, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return bool(colon) and self.check(user, password)


def bearer(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer KEY` header, or None."""
    scheme, _, key = (authorization or "").partition(" ")
    return (key.strip() or None) if scheme.lower() == "bearer" else None


@dataclass(frozen=True)
class Access:
    """Who may use the server: `keys` for /v1 (None: anyone), `logins` for the page (None: anyone), how many requests
    one key may have waiting or being answered (None: no share per key, only the server's own limits)."""

    keys: APIKeys | None = None
    logins: Logins | None = None
    max_waiting_per_key: int | None = None
    on_space: bool = False

    @classmethod
    def from_flags(cls, api_key: str | None = None, api_key_file: str | None = None, auth: Sequence[str] | None = None,
                   auth_file: str | None = None, max_waiting_per_key: int | None = None, *, max_waiting: int,
                   env: Mapping[str, str] = os.environ) -> Access:
        """From app.py's flags and the environment; AccessError for anything that cannot be used."""
        keys = read_keys(api_key, api_key_file, env)
        logins = read_logins(auth, auth_file, env)
        if max_waiting_per_key is not None and max_waiting_per_key < 1:
            raise AccessError(f"--max_waiting_per_key must be at least 1, not {max_waiting_per_key}.")
        # Each key's share of the queue only means something with several keys: one key is one client.
        share = (max_waiting_per_key or max(1, max_waiting // 4)) if len(keys) > 1 else None
        return cls(APIKeys(keys) if keys else None, Logins(logins) if logins else None, share, bool(env.get("SPACE_ID")))

    @property
    def api_served(self) -> bool:
        """/v1 runs everywhere but on a Space without keys, where anyone could use it."""
        return self.keys is not None or not self.on_space

    def warning(self, host: str, port: int) -> str | None:
        """One line when the server is reachable beyond this machine by anyone: bound beyond loopback, no key, no login,
        and not a Space (whose page is public by design)."""
        if self.keys or self.logins or self.on_space or is_loopback(host):
            return None
        return (f"warning: --host {host} serves the page, its API and /v1 to anyone who reaches port {port}, with no key "
                f"and no login: set --api_key KEY (or ${API_KEY_VARIABLE}) for /v1 and --auth USER:PASSWORD "
                f"(or ${AUTH_VARIABLE}) for the page.")

    def describe(self) -> str:
        """For the start-up line: what each part asks for, with counts, never a secret."""
        api = "off on a Space without --api_key" if not self.api_served else "no key" if not self.keys else (
            f"API key ({_count(len(self.keys), 'key')}"
            + (f", {self.max_waiting_per_key} waiting per key" if self.max_waiting_per_key else "") + ")")
        return f"/v1: {api}; page: " + (f"login ({_count(len(self.logins), 'user')})" if self.logins else "no login")

    def gradio_kwargs(self) -> dict:
        """What `gr.mount_gradio_app` and `Blocks.launch` take to put the page, its API and its MCP server behind the
        login: Gradio's own for the page and API, LoginRequired for the MCP server."""
        if not self.logins:
            return {}
        return {"auth": self.logins.check, "auth_message": LOGIN_MESSAGE,
                "app_kwargs": {"middleware": [Middleware(LoginRequired, logins=self.logins)]}}


OPEN = Access()  # anyone may use every part: the default of app.build_app and openai_api.router


class LoginRequired:
    """ASGI middleware: a request under `prefix` needs HTTP Basic auth with one of `logins`, else 401. Gradio's login
    covers its page, config and API routes, not the MCP server it mounts beside them."""

    def __init__(self, app, logins: Logins, prefix: str = MCP_PATH):
        self.app, self.logins, self.prefix = app, logins, prefix

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self._guarded(scope):
            header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
            if not self.logins.check_basic(header):
                response = JSONResponse(
                    {"error": "This MCP server is behind the page's login: send it as HTTP Basic auth "
                              "(Authorization: Basic base64(USER:PASSWORD))."},
                    status_code=401, headers={"WWW-Authenticate": 'Basic realm="alpaca-medis", charset="UTF-8"'})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _guarded(self, scope) -> bool:
        # The path as the app's routes see it (as Starlette's get_route_path): without the prefix it is mounted under.
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root + "/"):
            path = path[len(root):]
        return path == self.prefix or path.startswith(self.prefix + "/")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def read_keys(flag: str | None, file: str | None, env: Mapping[str, str] = os.environ) -> list[str]:
    """--api_key (else $API_KEY), comma-separated, and the lines of --api_key_file."""
    if flag is not None and not flag.strip():
        raise AccessError("--api_key is empty: give a key, or leave the flag out.")
    given, where = (flag, "--api_key") if flag is not None else (env.get(API_KEY_VARIABLE), f"${API_KEY_VARIABLE}")
    parts = given.split(",") if given else []
    keys = [_key(key.strip(), f"{where} (key {i + 1} of {len(parts)})") for i, key in enumerate(parts)]
    if file is not None:
        keys += [_key(text, f"--api_key_file {file} line {n}") for n, text in _lines(file, "--api_key_file", "key")]
    return keys


def read_logins(flags: Sequence[str] | None, file: str | None, env: Mapping[str, str] = os.environ) -> list[tuple[str, str]]:
    """--auth (repeatable; else $GRADIO_AUTH) and the lines of --auth_file, each USER:PASSWORD."""
    entries = [(text, "--auth") for text in flags] if flags else (
        [(env[AUTH_VARIABLE], f"${AUTH_VARIABLE}")] if env.get(AUTH_VARIABLE) else [])
    if file is not None:
        entries += [(text, f"--auth_file {file} line {n}") for n, text in _lines(file, "--auth_file", "USER:PASSWORD")]
    logins: dict[str, str] = {}
    for text, where in entries:
        user, password = _login(text, where)
        if user in logins:
            raise AccessError(f"{where}: the user {user!r} is given twice; give each user one password.")
        logins[user] = password
    return list(logins.items())


def _key(key: str, where: str) -> str:
    if not key:
        raise AccessError(f"{where}: the key is empty (two commas in a row, or one at the end?).")
    if not all(c.isascii() and c.isprintable() and not c.isspace() for c in key):
        raise AccessError(f"{where}: a key may hold printable ASCII characters only, without spaces "
                          "(it travels in an HTTP header).")
    return key


def _login(text: str, where: str) -> tuple[str, str]:
    user, colon, password = text.strip().partition(":")
    if not colon:
        raise AccessError(f"{where}: expected USER:PASSWORD, found no colon.")
    if not user.strip():
        raise AccessError(f"{where}: the user name before the colon is empty.")
    if not password:
        raise AccessError(f"{where}: the password after the colon is empty.")
    return user.strip(), password  # Gradio strips the user name typed in its login form, never the password


def _lines(path: str, flag: str, what: str) -> list[tuple[int, str]]:
    """(line number, text) of the file's lines that are neither blank nor comments."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [(n, line.strip()) for n, line in enumerate(f, 1)]
    except OSError as e:
        raise AccessError(f"{flag} {path} cannot be read ({e.strerror or type(e).__name__}): give a readable file, "
                          f"one {what} per line.") from None
    except UnicodeDecodeError:
        raise AccessError(f"{flag} {path} is not UTF-8 text: write one {what} per line.") from None
    lines = [(n, text) for n, text in lines if text and not text.startswith("#")]
    if not lines:
        raise AccessError(f"{flag} {path} holds no {what}: write one per line (lines starting with # are comments).")
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
