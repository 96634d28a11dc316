"""Bearer tokens for the HTTP API: generated at first start, kept in an owner-only file, compared in
constant time. Each token has a name; a request's operator in the audit trail is `api:<name>`."""
from __future__ import annotations

import fcntl
import hmac
import json
import os
import secrets
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TOKENS_FILE = "api-tokens.json"
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
MIN_SECRET_CHARS = 16  # a hand-edited short secret is not a secret: it never authenticates


class TokenFileDamaged(RuntimeError):
    """The tokens file cannot be read as tokens. Regenerating a token starts a new file."""


@dataclass(frozen=True)
class Token:
    name: str
    secret: str
    created_at: float


class TokenStore:
    def __init__(self, home: str | os.PathLike) -> None:
        self.path = Path(home) / TOKENS_FILE

    def tokens(self) -> list[Token]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            return [Token(str(t["name"]), str(t["secret"]), float(t.get("created_at", 0))) for t in raw["tokens"]]
        except FileNotFoundError:
            return []
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
            raise TokenFileDamaged(f"{self.path} is damaged ({type(e).__name__}: {e}); regenerate the token "
                                   f"(console: Alerts tab; or `cutline token regenerate default`)") from None

    def ensure_default(self) -> Token:
        """The token generated at first start (name 'default')."""
        existing = {t.name: t for t in self.tokens()}
        return existing.get("default") or self.regenerate("default")

    def regenerate(self, name: str) -> Token:
        """A new secret for `name` (created if missing); the old secret stops working at once. A damaged
        file is set aside (`api-tokens.json.damaged`) and a new one started."""
        if not name or not set(name) <= NAME_CHARS or len(name) > 64:
            raise ValueError(f"token name {name!r}: use letters, digits, '-', '_' or '.' (at most 64)")
        token = Token(name, secrets.token_urlsafe(32), time.time())
        with self._locked():
            try:
                others = [t for t in self.tokens() if t.name != name]
            except TokenFileDamaged:
                os.replace(self.path, self.path.with_name(self.path.name + ".damaged"))
                others = []
            self._write(others + [token])
        return token

    def revoke(self, name: str) -> bool:
        with self._locked():
            tokens = self.tokens()
            kept = [t for t in tokens if t.name != name]
            if len(kept) == len(tokens):
                return False
            self._write(kept)
        return True

    def authenticate(self, presented: str | None) -> str | None:
        """The name of the token presented, or None. Every stored secret is compared, in constant time.
        Raises TokenFileDamaged when the file cannot be read (the API then refuses every request)."""
        if not presented:
            return None
        found = None
        given = presented.encode()
        for token in self.tokens():
            if hmac.compare_digest(given, token.secret.encode()) and len(token.secret) >= MIN_SECRET_CHARS:
                found = token.name
        return found

    @contextmanager
    def _locked(self):
        """One writer at a time (the console and the CLI may regenerate at once)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, tokens: list[Token]) -> None:
        # mkstemp: a fresh owner-only (0600) file of our own, never a name another process also writes.
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"tokens": [t.__dict__ for t in tokens]}, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
