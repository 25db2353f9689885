"""Domain model: the data that crosses the boundaries between channels, dispatcher, routing and the store."""
from __future__ import annotations

import dataclasses
import enum
import math
from datetime import datetime, timezone
from typing import Any

import phonenumbers
from pydantic import BaseModel, ConfigDict, Field, field_validator


class InvalidIdentity(ValueError):
    """An identity value that cannot be normalised (e.g. a phone number that is not a number)."""


def normalise_identity(kind: str, value: str, *, default_region: str | None = None) -> str:
    """Canonical form of an identity value, so the same person is found again on every channel."""
    value = value.strip()
    if not value:
        raise InvalidIdentity(f"empty {kind} identity")
    if kind == "email":
        if "@" not in value:
            raise InvalidIdentity(f"not an email address: {value!r}")
        local, _, domain = value.rpartition("@")
        return f"{local}@{domain.lower()}".lower()
    if kind == "phone":
        try:
            number = phonenumbers.parse(value, default_region)
        except phonenumbers.NumberParseException as exc:
            raise InvalidIdentity(f"not a phone number: {value!r} ({exc})") from None
        if not phonenumbers.is_possible_number(number):
            raise InvalidIdentity(f"not a possible phone number: {value!r}")
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return value


class Identity(BaseModel):
    """One way to reach a customer: an email address, an E.164 phone number, an app user id, a social id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str = Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_.:-]*$")
    value: str = Field(min_length=1, max_length=512)

    def normalised(self, default_region: str | None = None) -> "Identity":
        return Identity(kind=self.kind, value=normalise_identity(self.kind, self.value, default_region=default_region))

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


class Attachment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: str = Field(default="attachment", max_length=512)
    content_type: str = Field(default="application/octet-stream", max_length=255)
    size: int | None = Field(default=None, ge=0)
    url: str | None = Field(default=None, max_length=4096)
    content: bytes | None = Field(default=None, description="inline content (base64 in JSON)")
    inline: bool = False


class ThreadHints(BaseModel):
    """What the channel knows about which conversation a message continues."""

    model_config = ConfigDict(extra="forbid")

    conversation: str | None = Field(default=None, max_length=512, description="channel-level conversation id")
    case_ref: str | None = Field(default=None, max_length=64, description="a case reference the sender quoted")
    in_reply_to: list[str] = Field(default_factory=list, max_length=100)
    quoted_ref: str | None = Field(
        default=None, max_length=64,
        description="a case reference found in free text (an email subject's [#SB-12] tag): weaker than in_reply_to",
    )
    new_conversation: bool = Field(
        default=False,
        description="the channel knows this starts a new conversation (e.g. a fresh email with no references)",
    )


def _check_finite(value: Any, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} is {value}: numbers must be finite (NaN and Infinity are not JSON)")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_finite(item, f"{where}[{i}]")


class PlatformContext(BaseModel):
    """What the marketplace says about the sender: their role and the order or task in question."""

    model_config = ConfigDict(extra="forbid")

    role: str | None = Field(default=None, max_length=64)
    order_id: str | None = Field(default=None, max_length=256)
    attributes: dict[str, Any] = Field(default_factory=dict)

    @field_validator("attributes")
    @classmethod
    def _finite(cls, attributes: dict[str, Any]) -> dict[str, Any]:
        """NaN and Infinity (which some JSON encoders write) are no JSON numbers: PostgreSQL's jsonb refuses
        them and SQLite's encoder would write null, so they are refused here, naming where."""
        if attributes:
            _check_finite(attributes, "attributes")
        return attributes


class InboundMessage(BaseModel):
    """One message as every channel hands it to the dispatcher."""

    model_config = ConfigDict(extra="forbid")

    channel: str = Field(min_length=1, max_length=64)
    account: str = Field(default="", max_length=512, description="the receiving address, number, page or bot")
    external_id: str = Field(min_length=1, max_length=998)
    sender: Identity
    display_name: str | None = Field(default=None, max_length=512)
    subject: str | None = Field(default=None, max_length=998)
    text: str = Field(default="", max_length=1_000_000)
    attachments: list[Attachment] = Field(default_factory=list, max_length=100)
    language: str | None = Field(default=None, max_length=16)
    thread: ThreadHints = Field(default_factory=ThreadHints)
    context: PlatformContext = Field(default_factory=PlatformContext)
    linked_identities: list[Identity] = Field(default_factory=list, max_length=20)
    received_at: datetime | None = None
    raw_ref: str | None = Field(default=None, max_length=1024, description="where the raw payload is kept")
    raw: bytes | None = Field(
        default=None, exclude=True, repr=False,
        description="the payload as received, stored with the message for audit (set by channel plugins)",
    )
    details: dict[str, Any] = Field(
        default_factory=dict, description="channel-specific facts kept with the message (headers, parsing notes)"
    )
    trusted: bool = Field(default=False, description="set by the channel: the source may link identities and set roles")
    auto_generated: bool = Field(default=False, description="machine-generated: never acknowledged automatically")

    @field_validator("received_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


def case_tag(ref: str) -> str:
    """How a case reference is written in subjects (`[#SB-12]`), so a reply quoting it threads back."""
    return f"[#{ref}]"


def tagged_subject(subject: str | None, ref: str, *, reply: bool = False) -> str:
    """`subject` with the case tag, once; `reply` adds one `Re: ` as mail clients do."""
    base = (subject or "").strip() or "Your request"
    if reply and not base.lower().startswith("re:"):
        base = f"Re: {base}"
    tag = case_tag(ref)
    return base if tag in base else f"{base} {tag}"


class CaseStatus(str, enum.Enum):
    NEW = "new"
    QUEUED = "queued"
    OFFERED = "offered"
    ASSIGNED = "assigned"
    WAITING_CUSTOMER = "waiting_customer"
    RESOLVED = "resolved"
    CLOSED = "closed"


OPEN_STATUSES = frozenset(
    {CaseStatus.NEW, CaseStatus.QUEUED, CaseStatus.OFFERED, CaseStatus.ASSIGNED, CaseStatus.WAITING_CUSTOMER}
)

# Allowed lifecycle moves; anything else is a bug or a stale action and is refused.
TRANSITIONS: dict[CaseStatus, frozenset[CaseStatus]] = {
    CaseStatus.NEW: frozenset({CaseStatus.QUEUED, CaseStatus.RESOLVED, CaseStatus.CLOSED}),
    CaseStatus.QUEUED: frozenset({CaseStatus.OFFERED, CaseStatus.ASSIGNED, CaseStatus.RESOLVED, CaseStatus.CLOSED}),
    CaseStatus.OFFERED: frozenset({CaseStatus.ASSIGNED, CaseStatus.QUEUED, CaseStatus.RESOLVED, CaseStatus.CLOSED}),
    CaseStatus.ASSIGNED: frozenset(
        {CaseStatus.WAITING_CUSTOMER, CaseStatus.QUEUED, CaseStatus.RESOLVED, CaseStatus.CLOSED}
    ),
    CaseStatus.WAITING_CUSTOMER: frozenset(
        {CaseStatus.ASSIGNED, CaseStatus.QUEUED, CaseStatus.RESOLVED, CaseStatus.CLOSED}
    ),
    CaseStatus.RESOLVED: frozenset({CaseStatus.QUEUED, CaseStatus.CLOSED}),
    CaseStatus.CLOSED: frozenset(),
}


class InvalidTransition(ValueError):
    def __init__(self, current: CaseStatus, target: CaseStatus):
        super().__init__(f"a {current.value} case cannot become {target.value}")
        self.current, self.target = current, target


def check_transition(current: CaseStatus, target: CaseStatus) -> None:
    if target not in TRANSITIONS[current]:
        raise InvalidTransition(current, target)


@dataclasses.dataclass(slots=True)
class Route:
    """Where a case should go and how fast."""

    line: str | None = None
    team: str | None = None
    tier: str = "L1"
    priority: int = 3  # 1 = most urgent
    required_skills: list[str] = dataclasses.field(default_factory=list)
    preferred_skills: list[str] = dataclasses.field(default_factory=list)
    sla_policy: str | None = None
    escalation: str | None = None
    safety_lane: bool = False  # may exceed agents' capacity and goes to the front of the queue
    rule: str = "default"
    reasons: list[str] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        # What dataclasses.asdict gives, built directly (it deep-copies recursively: a hot spot under load).
        return {"line": self.line, "team": self.team, "tier": self.tier, "priority": self.priority,
                "required_skills": list(self.required_skills), "preferred_skills": list(self.preferred_skills),
                "sla_policy": self.sla_policy, "escalation": self.escalation, "safety_lane": self.safety_lane,
                "rule": self.rule, "reasons": list(self.reasons)}


@dataclasses.dataclass(slots=True)
class Customer:
    id: int
    role: str | None
    display_name: str | None
    language: str | None
    created_at: datetime
    identities: list[Identity] = dataclasses.field(default_factory=list)
    merged_into: int | None = None  # a tombstone: this customer became that one


@dataclasses.dataclass(slots=True)
class Case:
    id: int
    ref: str
    customer_id: int
    status: CaseStatus
    channel: str
    account: str
    subject: str | None
    language: str | None
    line: str | None
    team: str | None
    tier: str | None
    priority: int
    created_at: datetime
    updated_at: datetime
    last_inbound_at: datetime | None = None
    resolved_at: datetime | None = None
    related_case_id: int | None = None
    order_id: str | None = None
    route: dict[str, Any] = dataclasses.field(default_factory=dict)
    merged_into: int | None = None  # merged into that case: closed, its messages moved there

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


class Direction(str, enum.Enum):
    INBOUND = "in"
    OUTBOUND = "out"
    NOTE = "note"


@dataclasses.dataclass(slots=True)
class Message:
    id: int
    case_id: int
    direction: Direction
    channel: str
    account: str
    external_id: str | None
    sender: str | None  # "kind:value" for inbound, agent or "system" for outbound
    text: str
    created_at: datetime
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    attachments: list[dict[str, Any]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(slots=True)
class Event:
    """Something that happened to a case; the log is append-only."""

    id: int
    case_id: int | None
    type: str
    at: datetime
    actor: str
    data: dict[str, Any] = dataclasses.field(default_factory=dict)


class OutboundStatus(str, enum.Enum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclasses.dataclass(slots=True)
class Outbound:
    """A message waiting in (or gone through) the outbox."""

    id: int
    case_id: int
    message_id: int | None
    channel: str
    account: str
    recipient: Identity
    kind: str  # "ack" (new or reopened case), "reply", ...
    text: str
    subject: str | None
    status: OutboundStatus
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    last_error: str | None = None
    provider_id: str | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(slots=True)
class DeliveryResult:
    """What a channel says after trying to deliver an outbound message."""

    ok: bool
    provider_id: str | None = None
    error: str | None = None
    transient: bool = True  # a failure worth retrying

    @classmethod
    def sent(cls, provider_id: str | None = None) -> "DeliveryResult":
        return cls(ok=True, provider_id=provider_id)

    @classmethod
    def retry(cls, error: str) -> "DeliveryResult":
        return cls(ok=False, error=error, transient=True)

    @classmethod
    def permanent(cls, error: str) -> "DeliveryResult":
        return cls(ok=False, error=error, transient=False)


class IngestOutcome(str, enum.Enum):
    CREATED = "created"  # a new case
    APPENDED = "appended"  # added to an open case
    REOPENED = "reopened"  # a resolved case came back
    DUPLICATE = "duplicate"  # seen before: nothing written


@dataclasses.dataclass(slots=True)
class IngestResult:
    outcome: IngestOutcome
    case: Case
    message_id: int
    customer_id: int
    events: list[Event] = dataclasses.field(default_factory=list)
    outbound_ids: list[int] = dataclasses.field(default_factory=list)
