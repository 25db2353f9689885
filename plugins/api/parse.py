"""The API channel's wire format: a JSON message from an integration → InboundMessage. Pure functions."""
from __future__ import annotations


import base64
import binascii
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from router.config import IntegrationConfig
from router.core.model import Attachment, Identity, InboundMessage, PlatformContext, ThreadHints

CHANNEL = "api"


def _strict_base64(value: object) -> bytes:
    # pydantic's Base64Bytes skips characters outside the alphabet, so garbage would become empty content.
    if not isinstance(value, str):
        raise ValueError("must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64 (standard alphabet, padded)") from None


StrictBase64 = Annotated[bytes, BeforeValidator(_strict_base64)]


class ApiAttachment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: str = Field(default="attachment", max_length=512)
    content_type: str = Field(default="application/octet-stream", max_length=255)
    url: str | None = Field(default=None, max_length=4096)
    content_base64: StrictBase64 | None = None
    inline: bool = False


class ApiMessage(BaseModel):
    """What an integration POSTs to /api/v1/messages."""

    model_config = ConfigDict(extra="forbid")

    external_id: str = Field(min_length=1, max_length=512, description="your id for this message; resending it is safe")
    sender: Identity
    display_name: str | None = Field(default=None, max_length=512)
    subject: str | None = Field(default=None, max_length=998)
    text: str = Field(default="", max_length=1_000_000)
    attachments: list[ApiAttachment] = Field(default_factory=list, max_length=100)
    language: str | None = Field(default=None, max_length=16)
    thread: ThreadHints = Field(default_factory=ThreadHints)
    context: PlatformContext = Field(default_factory=PlatformContext)
    linked_identities: list[Identity] = Field(default_factory=list, max_length=20)
    received_at: AwareDatetime | None = None
    auto_generated: bool = Field(default=False, description="machine-generated: never acknowledged automatically")


class InvalidPayload(ValueError):
    def __init__(self, problems: list[dict[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{p['field']}: {p['problem']}" for p in problems))


def parse_message(body: bytes, integration: IntegrationConfig) -> InboundMessage:
    """Validate a request body and normalise it; raises InvalidPayload naming every wrong field."""
    try:
        payload = ApiMessage.model_validate_json(body)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            field = ".".join(str(p) for p in error["loc"]) or "(body)"
            problem = error["msg"].removeprefix("Value error, ")
            if error["type"] == "json_invalid":
                field, problem = "(body)", f"not valid JSON: {error.get('ctx', {}).get('error', problem)}"
            elif error["type"] == "model_type":
                field, problem = "(body)", "the body must be a JSON object"
            problems.append({"field": field, "problem": problem})
        raise InvalidPayload(problems) from None
    namespace = f"{integration.name}/"
    thread = payload.thread
    if thread.in_reply_to:
        thread = thread.model_copy(update={"in_reply_to": [namespace + i for i in thread.in_reply_to]})
    # Every field was validated above with the same or stricter limits: build without validating twice. Every
    # field is given, defaults too: for a field left out, model_construct inspects its default factory's
    # signature on every call (pydantic), which cost 7 % of the event loop's time in benchmarks/ingest.py.
    return InboundMessage.model_construct(
        channel=CHANNEL,
        account=integration.name,
        # Namespaced by integration, so two integrations' ids never collide; replies name the same namespace.
        external_id=namespace + payload.external_id,
        sender=payload.sender,
        display_name=payload.display_name,
        subject=payload.subject,
        text=payload.text,
        attachments=[
            Attachment.model_construct(
                filename=a.filename, content_type=a.content_type, size=None, url=a.url, content=a.content_base64,
                inline=a.inline,
            )
            for a in payload.attachments
        ],
        language=payload.language,
        thread=thread,
        context=payload.context,
        linked_identities=payload.linked_identities if integration.trusted else [],
        received_at=payload.received_at,
        raw_ref=None,
        raw=None,
        details={},
        trusted=integration.trusted,
        auto_generated=payload.auto_generated,
    )
