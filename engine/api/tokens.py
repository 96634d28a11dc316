"""Bearer tokens for the HTTP API: generated at first start, kept in an owner-only file, compared in
constant time. Each token has a name; a request's operator in the audit trail is `api:<name>`."""
from __future__ import annotations

import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

TOKENS_FILE = "api-tokens.json"
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


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
        except FileNotFoundError:
            return []
        except ValueError as e:
            raise RuntimeError(f"{self.path} is not valid JSON ({e}); fix or delete it to regenerate") from None
        return [Token(t["name"], t["secret"], float(t.get("created_at", 0))) for t in raw.get("tokens", [])]

    def ensure_default(self) -> Token:
        """The token generated at first start (name 'default')."""
        existing = {t.name: t for t in self.tokens()}
        return existing.get("default") or self.regenerate("default")

    def regenerate(self, name: str) -> Token:
        """A new secret for `name` (created if missing); the old secret stops working at once."""
        if not name or not set(name) <= NAME_CHARS or len(name) > 64:
            raise ValueError(f"token name {name!r}: use letters, digits, '-', '_' or '.' (at most 64)")
        token = Token(name, secrets.token_urlsafe(32), time.time())
        others = [t for t in self.tokens() if t.name != name]
        self._write(others + [token])
        return token

    def revoke(self, name: str) -> bool:
        tokens = self.tokens()
        kept = [t for t in tokens if t.name != name]
        if len(kept) == len(tokens):
            return False
        self._write(kept)
        return True

    def authenticate(self, presented: str | None) -> str | None:
        """The name of the token presented, or None. Every stored secret is compared, in constant time."""
        if not presented:
            return None
        found = None
        given = presented.encode()
        for token in self.tokens():
            if hmac.compare_digest(given, token.secret.encode()):
                found = token.name
        return found

    def _write(self, tokens: list[Token]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # owner-only from the first byte
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"tokens": [t.__dict__ for t in tokens]}, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
