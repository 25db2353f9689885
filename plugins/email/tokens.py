"""Case tokens in Switchboard's own Message-IDs and reply addresses, signed so that they cannot be made up.

A Message-ID is `sb.<REF>.o<outbound id>.<sig>@<domain>`; a reply address is `<local>+<REF>.<sig>@<domain>`.
A reply or a bounce that quotes either leads back to the case (and to the outbound message) without a lookup.
"""
from __future__ import annotations

import hashlib
import hmac
import re

_IN_ID = re.compile(r"^sb\.([A-Z]{1,8}-\d{1,12})\.o(\d{1,18})\.([0-9a-f]{12})@", re.IGNORECASE)
_IN_ADDRESS = re.compile(r"^[^@+]+\+([A-Z]{1,8}-\d{1,12})\.([0-9a-f]{12})@", re.IGNORECASE)


class Tokens:
    def __init__(self, secret: str, domain: str):
        self._key = secret.encode()
        self.domain = domain

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.upper().encode(), hashlib.sha256).hexdigest()[:12]

    def message_id(self, ref: str, outbound_id: int) -> str:
        return f"sb.{ref}.o{outbound_id}.{self._sign(f'{ref}.{outbound_id}')}@{self.domain}"

    def reply_address(self, address: str, ref: str) -> str:
        local, _, domain = address.rpartition("@")
        return f"{local}+{ref}.{self._sign(ref)}@{domain}"

    def from_message_id(self, message_id: str) -> tuple[str, int] | None:
        """(case ref, outbound id) when `message_id` is one of ours and its signature holds."""
        match = _IN_ID.match(message_id)
        if match is None:
            return None
        ref, outbound_id, sig = match.group(1).upper(), match.group(2), match.group(3).lower()
        if not hmac.compare_digest(self._sign(f"{ref}.{outbound_id}"), sig):
            return None
        return ref, int(outbound_id)

    def from_address(self, address: str) -> str | None:
        match = _IN_ADDRESS.match(address)
        if match is None:
            return None
        ref, sig = match.group(1).upper(), match.group(2).lower()
        return ref if hmac.compare_digest(self._sign(ref), sig) else None

    def find(self, message_ids: list[str], addresses: list[str]) -> tuple[str | None, int | None]:
        """The case a mail belongs to by its tokens, newest first, and the outbound message it answers, if any."""
        for address in addresses:
            ref = self.from_address(address)
            if ref:
                outbound = next((o for r, o in filter(None, map(self.from_message_id, reversed(message_ids)))
                                 if r == ref), None)
                return ref, outbound
        for message_id in reversed(message_ids):
            found = self.from_message_id(message_id)
            if found:
                return found
        return None, None


def base_address(address: str) -> str:
    """`support+TK-12.sig@x` → `support@x`: the mailbox a tokenised reply address belongs to."""
    local, _, domain = address.rpartition("@")
    return f"{local.split('+', 1)[0]}@{domain}"
