"""API keys of the auction endpoints' callers (publishers and exchanges), and the policy their requests get.

A key reads ``<key_id>.<secret>``. The key id is the row's primary key, so a key is found
without scanning; only the secret's SHA-256 is stored, and it is compared in constant time.
The secret is shown once, by ``create_key``. A revoked key keeps its row (``revoked_at``),
so ``list_keys`` still shows who had access and until when.

SQLAlchemy expressions only; writers commit their own transaction, begun with ``begin_write``,
as in ``store``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from auction_service.campaign_store.db import begin_write
from auction_service.campaign_store.store import fresh_read
from auction_service.campaign_store.tables import ApiKey

KEY_SEPARATOR = "."  # token_urlsafe never writes it, so the first one ends the key id
MAX_CALLER_ID_LENGTH = 64  # api_keys.caller_id
MAX_FLOOR_CPM_MICROS = 1_000_000_000  # USD 1,000 CPM, openrtb.MAX_BIDFLOOR: above is a unit mistake


class CallerKind(StrEnum):
    PUBLISHER = "publisher"  # sells its own inventory through /v1/auction or OpenRTB
    EXCHANGE = "exchange"  # resells publishers' inventory, usually through OpenRTB


class RevokeOutcome(StrEnum):
    REVOKED = "revoked"
    ALREADY_REVOKED = "already revoked"  # revoking is final; a second revoke changes nothing
    UNKNOWN_KEY = "unknown key"


@dataclass(frozen=True, slots=True)
class CallerPolicy:
    """What one caller may ask of an auction.

    ``caller_id`` becomes the auction's ``publisher_id``. ``max_floor_cpm_micros`` None means
    no cap (the anonymous local caller only).
    """

    caller_id: str | None
    max_floor_cpm_micros: int | None
    first_price_allowed: bool

    def floor_cpm_micros(self, requested_micros: int) -> int:
        """The request's floor, lowered to this caller's maximum: a caller cannot raise the price beyond it."""
        cap = self.max_floor_cpm_micros
        return requested_micros if cap is None or requested_micros <= cap else cap


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key just made. ``api_key`` is the only copy of its secret: shown once, never stored."""

    key_id: str
    caller_id: str
    kind: CallerKind
    api_key: str
    max_floor_cpm_micros: int
    first_price_allowed: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class KeyView:
    """A key as ``list_keys`` shows it: everything but its secret's digest."""

    key_id: str
    caller_id: str
    kind: CallerKind
    max_floor_cpm_micros: int
    first_price_allowed: bool
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class ActiveKey:
    """A key that is not revoked, with what checking a presented secret against it needs."""

    key_id: str
    secret_sha256: bytes
    policy: CallerPolicy

    def admits(self, secret: str) -> bool:
        """Whether ``secret`` is this key's, compared in constant time."""
        return hmac.compare_digest(hashlib.sha256(secret.encode()).digest(), self.secret_sha256)


def split_key(api_key: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a presented key, or None when it is not shaped ``<key_id>.<secret>``."""
    key_id, separator, secret = api_key.partition(KEY_SEPARATOR)
    if not separator or not key_id or not secret:
        return None
    return key_id, secret


def _new_key_id() -> str:
    return secrets.token_hex(8)  # 64 random bits: unique among a platform's keys, short enough to read out


def create_key(
    session: Session,
    *,
    caller_id: str,
    kind: CallerKind,
    max_floor_cpm_micros: int,
    first_price_allowed: bool,
    now: datetime | None = None,
) -> IssuedKey:
    """Make a key for ``caller_id`` with its policy, and commit. The returned ``api_key`` is not kept anywhere."""
    if not caller_id or len(caller_id) > MAX_CALLER_ID_LENGTH:
        raise ValueError(f"caller_id must be 1 to {MAX_CALLER_ID_LENGTH} characters, got {caller_id!r}")
    kind = CallerKind(kind)
    if not 0 <= max_floor_cpm_micros <= MAX_FLOOR_CPM_MICROS:
        raise ValueError(
            f"max_floor_cpm_micros must be 0 to {MAX_FLOOR_CPM_MICROS} (USD 1,000 CPM), got {max_floor_cpm_micros}"
        )
    key_id, secret = _new_key_id(), secrets.token_urlsafe(32)
    created_at = now or datetime.now(UTC)
    begin_write(session)
    try:
        session.add(
            ApiKey(
                key_id=key_id,
                caller_id=caller_id,
                kind=kind.value,
                secret_sha256=hashlib.sha256(secret.encode()).hexdigest(),
                max_floor_cpm_micros=max_floor_cpm_micros,
                first_price_allowed=first_price_allowed,
                created_at=created_at,
                revoked_at=None,
            )
        )
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return IssuedKey(
        key_id=key_id,
        caller_id=caller_id,
        kind=kind,
        api_key=f"{key_id}{KEY_SEPARATOR}{secret}",
        max_floor_cpm_micros=max_floor_cpm_micros,
        first_price_allowed=first_price_allowed,
        created_at=created_at,
    )


def revoke_key(session: Session, key_id: str, *, now: datetime | None = None) -> RevokeOutcome:
    """Revoke a key for good, and commit. The auction service refuses it once its key cache reloads."""
    begin_write(session)
    try:
        revoked = session.execute(
            update(ApiKey)
            .where(ApiKey.key_id == key_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=now or datetime.now(UTC))
        )
        if revoked.rowcount == 1:
            outcome = RevokeOutcome.REVOKED
        elif session.get(ApiKey, key_id) is not None:
            outcome = RevokeOutcome.ALREADY_REVOKED
        else:
            outcome = RevokeOutcome.UNKNOWN_KEY
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return outcome


@fresh_read
def list_keys(session: Session, *, include_revoked: bool = True) -> list[KeyView]:
    """Every key (or only the ones in force), by caller then creation time."""
    query = select(ApiKey).order_by(ApiKey.caller_id, ApiKey.created_at, ApiKey.key_id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return [
        KeyView(
            key_id=row.key_id,
            caller_id=row.caller_id,
            kind=CallerKind(row.kind),
            max_floor_cpm_micros=row.max_floor_cpm_micros,
            first_price_allowed=row.first_price_allowed,
            created_at=row.created_at,
            revoked_at=row.revoked_at,
        )
        for row in session.scalars(query)
    ]


_ACTIVE_COLUMNS = (
    ApiKey.key_id,
    ApiKey.secret_sha256,
    ApiKey.caller_id,
    ApiKey.max_floor_cpm_micros,
    ApiKey.first_price_allowed,
)


def _active(key_id: str, secret_sha256: str, caller_id: str, max_floor: int, first_price: bool) -> ActiveKey:
    return ActiveKey(key_id, bytes.fromhex(secret_sha256), CallerPolicy(caller_id, max_floor, first_price))


@fresh_read
def active_keys(session: Session) -> dict[str, ActiveKey]:
    """Every key in force, by key id, in one query: what the auction service holds in memory."""
    rows = session.execute(select(*_ACTIVE_COLUMNS).where(ApiKey.revoked_at.is_(None)))
    return {row[0]: _active(*row) for row in rows.tuples()}


@fresh_read
def resolve(session: Session, api_key: str) -> CallerPolicy | None:
    """The policy of a presented key, or None when it is malformed, unknown, revoked or its secret is wrong."""
    split = split_key(api_key)
    if split is None:
        return None
    key_id, secret = split
    row = session.execute(select(*_ACTIVE_COLUMNS).where(ApiKey.key_id == key_id, ApiKey.revoked_at.is_(None)))
    found = row.tuples().one_or_none()
    if found is None:
        return None
    key = _active(*found)
    return key.policy if key.admits(secret) else None
