"""Operator configuration: YAML files in a directory, validated into typed objects before anything starts."""
from __future__ import annotations

import os
import re
import string
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, Field, PrivateAttr, ValidationError, field_validator, model_validator

from router.config_base import MAIN_FILE, ConfigError, Duration, Model, Secret, parse_duration
from router.routing_config import (
    AgentConfig,
    CalendarConfig,
    ClassificationConfig,
    EscalationPolicyConfig,
    LineConfig,
    OffersConfig,
    RoutingConfig,
    SlaPolicyConfig,
    TeamConfig,
)

M = TypeVar("M", bound=Model)


class InstanceConfig(Model):
    name: str = "Switchboard"
    case_ref_prefix: str = Field(default="SB", pattern=r"^[A-Z]{1,8}$")
    default_region: str = Field(default="US", pattern=r"^[A-Z]{2}$", description="for phone numbers without +")
    default_language: str = "en"
    languages: list[str] = Field(default_factory=lambda: ["en", "it", "ru", "uz"], min_length=1)
    roles: list[str] = Field(default_factory=lambda: ["poster", "tasker", "courier", "partner"], min_length=1)

    @field_validator("default_region")
    @classmethod
    def _known_region(cls, region: str) -> str:
        import phonenumbers

        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{region!r} is not a country code phone numbers know (ISO 3166, e.g. IT, US, UZ)")
        return region

    @model_validator(mode="after")
    def _default_language_known(self) -> "InstanceConfig":
        if self.default_language not in self.languages:
            raise ValueError(f"default_language {self.default_language!r} is not in languages {self.languages}")
        return self


class ServerConfig(Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="larger requests get 413")


class SqliteConfig(Model):
    path: str = "switchboard.db"
    busy_timeout_ms: int = Field(default=5000, ge=0)
    max_batch: int = Field(default=256, ge=1, le=10_000, description="messages committed together at most")


class PostgresConfig(Model):
    dsn: Secret
    min_connections: int = Field(default=2, ge=1)
    max_connections: int = Field(default=10, ge=1)

    @model_validator(mode="after")
    def _pool_bounds(self) -> "PostgresConfig":
        if self.min_connections > self.max_connections:
            raise ValueError(f"min_connections ({self.min_connections}) exceeds max_connections ({self.max_connections})")
        return self


class StoreConfig(Model):
    backend: Literal["sqlite", "postgres"] = "sqlite"
    sqlite: SqliteConfig = Field(default_factory=SqliteConfig)
    postgres: PostgresConfig | None = None

    @model_validator(mode="after")
    def _postgres_needs_dsn(self) -> "StoreConfig":
        if self.backend == "postgres" and self.postgres is None:
            raise ValueError("backend is postgres but store.postgres.dsn is not set")
        return self


class ThreadingConfig(Model):
    reopen_window: Duration = timedelta(hours=72)
    attach_to_open_case: Literal["any_channel", "same_channel", "never"] = "any_channel"


TEMPLATE_FIELDS = frozenset({"ref", "name", "instance"})
DEFAULT_TEMPLATES: dict[str, dict[str, str]] = {
    "new_case": {
        "en": "Thanks for contacting {instance}. Your case reference is {ref}; we will answer here as soon as we can.",
        "it": "Grazie per aver contattato {instance}. Il riferimento della tua richiesta è {ref}; "
        "ti risponderemo qui al più presto.",
        "ru": "Спасибо за обращение в {instance}. Номер вашего обращения: {ref}. Мы ответим здесь как можно скорее.",
        "uz": "{instance} bilan bog'langaningiz uchun rahmat. Murojaatingiz raqami: {ref}. "
        "Tez orada shu yerda javob beramiz.",
    },
    "reopened": {
        "en": "Your case {ref} has been reopened; we will get back to you here.",
        "it": "La tua richiesta {ref} è stata riaperta; ti risponderemo qui.",
        "ru": "Ваше обращение {ref} снова открыто; мы ответим вам здесь.",
        "uz": "{ref} raqamli murojaatingiz qayta ochildi; sizga shu yerda javob beramiz.",
    },
}


def _check_placeholders(texts: dict[str, str], allowed: frozenset[str] | set[str], prefix: str = "") -> None:
    """Each text must format with exactly these placeholders (checked here, not when a customer is written to)."""
    for language, text in texts.items():
        try:
            fields = [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
        except ValueError as exc:
            raise ValueError(f"{prefix}{language}: {exc}; write literal braces as {{{{ and }}}}") from None
        unknown = sorted(set(fields) - set(allowed))
        if unknown:
            raise ValueError(f"{prefix}{language}: unknown placeholder(s) {unknown}; use {sorted(allowed)}")


def _merge_templates(value: Any) -> Any:
    """Operators override single texts; every other kind and language keeps its built-in text."""
    if not isinstance(value, dict):
        return value
    merged = {kind: dict(texts) for kind, texts in DEFAULT_TEMPLATES.items()}
    for kind, texts in value.items():
        if isinstance(texts, dict) and kind in merged:
            merged[kind].update(texts)
        else:
            merged[kind] = texts
    return merged


class AcknowledgementConfig(Model):
    enabled: bool = True
    templates: Annotated[dict[Literal["new_case", "reopened"], dict[str, str]], BeforeValidator(_merge_templates)] = (
        Field(default_factory=lambda: {k: dict(v) for k, v in DEFAULT_TEMPLATES.items()})
    )

    @field_validator("templates")
    @classmethod
    def _known_fields(cls, templates: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for kind, by_language in templates.items():
            _check_placeholders(by_language, TEMPLATE_FIELDS, prefix=f"{kind}.")
        return templates


class OutboxConfig(Model):
    max_attempts: int = Field(default=8, ge=1, le=100)
    backoff_base: Duration = timedelta(seconds=5)
    backoff_max: Duration = timedelta(hours=1)
    batch: int = Field(default=50, ge=1)
    lease: Duration = timedelta(minutes=2)
    poll_interval: Duration = timedelta(seconds=5)


class WebhookConfig(Model):
    url: str = Field(pattern=r"^https?://")
    secret: Secret
    timeout: Duration = timedelta(seconds=10)


class IntegrationConfig(Model):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=64)
    token: Secret
    scopes: list[Literal["ingest", "read", "agent", "supervise"]] = Field(
        default_factory=lambda: ["ingest"],
        description="ingest: post messages; read: cases, queue, agents; agent: act for agents (presence, offers, "
                    "replies, status, escalation); supervise: change agents, transfer cases",
    )
    trusted: bool = Field(default=False, description="may link identities and assert the sender's role")
    webhook: WebhookConfig | None = None


class AccountConfig(Model):
    """A person who signs in: an agent works cases; a supervisor also watches and moves the cases of their
    lines and teams (none listed: all); an admin also manages agents and accounts."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.@-]*$", max_length=128)
    name: str
    role: Literal["agent", "supervisor", "admin"] = "agent"
    agent: str | None = Field(default=None, description="the agent (agents.yaml) this person works as")
    lines: list[str] = Field(default_factory=list, description="a supervisor's lines; empty = every line")
    teams: list[str] = Field(default_factory=list, description="a supervisor's teams; empty = every team")
    password: Secret | None = Field(default=None, description="set at start-up (hashed); or use password_hash")
    password_hash: str | None = Field(default=None, pattern=r"^\$argon2", description="an argon2 hash")

    @field_validator("password")
    @classmethod
    def _long_enough(cls, password: Secret | None) -> Secret | None:
        if password is not None and len(password.get()) < 8:  # as the server would refuse it at start-up
            raise ValueError(f"the password from ${password.env} has fewer than 8 characters")
        return password


class ConsoleConfig(Model):
    session_ttl: Duration = timedelta(hours=12)
    stream_heartbeat: Duration = timedelta(seconds=15)
    stream_backlog: int = Field(default=5000, ge=100, description="events replayed at most after a reconnect")


CSAT_TEMPLATES = {
    "en": "Your request {ref} is resolved. How did we do? Reply with a number from 1 (poor) to 5 (excellent).",
    "it": "La tua richiesta {ref} è stata risolta. Come siamo andati? Rispondi con un numero da 1 (male) a 5 "
          "(ottimo).",
    "ru": "Ваше обращение {ref} решено. Как мы справились? Ответьте цифрой от 1 (плохо) до 5 (отлично).",
    "uz": "{ref} raqamli murojaatingiz hal qilindi. Qanday ishladik? 1 (yomon) dan 5 (a'lo) gacha raqam bilan "
          "javob bering.",
}


CSAT_FIELDS = frozenset({"ref"})


class CsatLineConfig(Model):
    enabled: bool | None = None
    templates: dict[str, str] = Field(default_factory=dict)

    @field_validator("templates")
    @classmethod
    def _known_fields(cls, templates: dict[str, str]) -> dict[str, str]:
        _check_placeholders(templates, CSAT_FIELDS)
        return templates


class CsatConfig(Model):
    """After a resolution, a one-question survey on the customer's channel; a low score opens a quality case."""

    enabled: bool = True
    templates: dict[str, str] = Field(default_factory=lambda: dict(CSAT_TEMPLATES))
    lines: dict[str, CsatLineConfig] = Field(default_factory=dict, description="per-line switch and texts")
    answer_window: Duration = timedelta(days=7)
    low_score: int = Field(default=3, ge=2, le=5, description="scores below this open a follow-up")
    followup_team: str | None = Field(default="quality", description="none: low scores open nothing")
    followup_priority: int = Field(default=2, ge=1, le=5)

    @field_validator("templates")
    @classmethod
    def _merge(cls, templates: dict[str, str]) -> dict[str, str]:
        _check_placeholders(templates, CSAT_FIELDS)
        return {**CSAT_TEMPLATES, **templates}

    def text_for(self, line: str | None, language: str | None, default_language: str) -> str | None:
        """The survey text for a case, or None when surveys are off for its line."""
        per_line = self.lines.get(line or "")
        enabled = per_line.enabled if per_line is not None and per_line.enabled is not None else self.enabled
        if not enabled:
            return None
        texts = {**self.templates, **(per_line.templates if per_line else {})}
        return texts.get(language or "") or texts.get(default_language) or CSAT_TEMPLATES["en"]


class Config(Model):
    instance: InstanceConfig = Field(default_factory=InstanceConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    threading: ThreadingConfig = Field(default_factory=ThreadingConfig)
    acknowledgements: AcknowledgementConfig = Field(default_factory=AcknowledgementConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    integrations: list[IntegrationConfig] = Field(default_factory=list)
    plugins: dict[str, dict[str, Any]] = Field(default_factory=dict)
    blocked_plugins: list[str] = Field(default_factory=list)
    # routing and assignment (router/routing_config.py)
    tiers: list[str] = Field(default_factory=lambda: ["L1", "L2", "L3"], min_length=1)
    skills: list[str] = Field(default_factory=list, description="free-form skills agents may have")
    calendars: dict[str, CalendarConfig] = Field(default_factory=dict)
    lines: dict[str, LineConfig] = Field(default_factory=dict)
    teams: dict[str, TeamConfig] = Field(default_factory=dict)
    sla_policies: dict[str, SlaPolicyConfig] = Field(default_factory=dict)
    escalation_policies: dict[str, EscalationPolicyConfig] = Field(default_factory=dict)
    offers: OffersConfig = Field(default_factory=OffersConfig)
    classification: ClassificationConfig = Field(default_factory=ClassificationConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    agents: list[AgentConfig] = Field(default_factory=list)
    accounts: list[AccountConfig] = Field(default_factory=list)
    console: ConsoleConfig = Field(default_factory=ConsoleConfig)
    csat: CsatConfig = Field(default_factory=CsatConfig)

    # Where the configuration was read from: the folder, and which file holds each top-level key.
    _directory: Path | None = PrivateAttr(default=None)
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def directory(self) -> Path | None:
        return self._directory

    def source_of(self, key: str) -> str:
        return self._sources.get(key, MAIN_FILE)

    @field_validator("tiers")
    @classmethod
    def _unique_tiers(cls, tiers: list[str]) -> list[str]:
        repeated = sorted({t for t in tiers if tiers.count(t) > 1})
        if repeated:  # the tier above L2 would be found by position and could be L1 again
            raise ValueError(f"tiers are listed once each, lowest first; repeated: {repeated}")
        return tiers

    @field_validator("integrations")
    @classmethod
    def _unique_integrations(cls, integrations: list[IntegrationConfig]) -> list[IntegrationConfig]:
        names = [i.name for i in integrations]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate names {dupes}")
        tokens = [i.token.get() for i in integrations]
        if len(set(tokens)) != len(tokens):
            raise ValueError("two integrations share a token; give each its own")
        return integrations

    @model_validator(mode="after")
    def _cross_checks(self) -> "Config":
        # Model-level problems start with the key path they concern, so the loader can name the right file.
        for kind, by_language in self.acknowledgements.templates.items():
            missing = [lang for lang in self.instance.languages if lang not in by_language]
            if missing:
                raise ValueError(f"acknowledgements.templates.{kind}: no text for languages {missing}")
        from router.core.references import check_references

        problems = check_references(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


class _StrictLoader(yaml.SafeLoader):
    """YAML as the safe loader reads it, except that a key written twice in one mapping is an error (the safe
    loader keeps the last one silently: a second `server:` would replace the first without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges a mapping in; keys written here may override what it brings
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:
                continue  # an unhashable key: construct_mapping reports it
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is written twice (first on line {first.line + 1}); keep one",
                    key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _StrictLoader.construct_mapping)


def read_yaml_text(text: str) -> Any:
    """Parse YAML as configuration files are parsed (duplicate keys refused)."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = read_yaml_text(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{path.name}:{where}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path.name}: not UTF-8 text ({exc.reason})"]) from None
    except ValueError as exc:  # a value YAML reads but Python cannot hold, such as the date 2026-02-30
        raise ConfigError([f"{path.name}: a value cannot be read: {exc} (dates are YYYY-MM-DD)"]) from None
    except OSError as exc:
        raise ConfigError([f"{path.name}: cannot be read: {exc.strerror or exc}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path.name}: the top level must be a mapping of keys, not {type(data).__name__}"])
    return data


def load_config(directory: str | os.PathLike[str]) -> Config:
    """Read every *.yaml file at the top of `directory`, merge their top-level keys and validate."""
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError([f"{root}: not a directory; pass the folder that holds {MAIN_FILE}"])
    if not (root / MAIN_FILE).is_file():
        raise ConfigError([f"{root}: no {MAIN_FILE}; every deployment has one (copy config/ as a start)"])
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    problems: list[str] = []
    for path in sorted(root.glob("*.yml")):
        problems.append(f"{path.name}: Switchboard reads *.yaml files only; rename it to {path.stem}.yaml")
    # The main file first, so that a key repeated elsewhere is reported against the other file.
    for path in sorted(root.glob("*.yaml"), key=lambda p: (p.name != MAIN_FILE, p.name)):
        try:
            data = _read_yaml(path)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        for key, value in data.items():
            if key in sources:
                problems.append(f"{path.name}: {key}: already defined in {sources[key]}; keep it in one file")
                continue
            merged[key] = value
            sources[key] = path.name
    if problems:
        raise ConfigError(problems)
    config = validate_config(merged, sources)
    config._directory = root.resolve()
    config._sources = sources
    return config


def validate_config(data: dict[str, Any], sources: dict[str, str] | None = None) -> Config:
    sources = sources or {}
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = error["loc"]
            text = error["msg"].removeprefix("Value error, ")
            # A model-level check may report several problems, one a line, each starting with its key path.
            for message in text.split("\n") if not loc else [text]:
                where = loc
                if not loc and re.match(r"^[a-z_]+[\w.\[\]-]*: ", message):
                    path, message = message.split(": ", 1)
                    where = (path,)
                file = sources.get(re.split(r"[.\[]", str(where[0]))[0], MAIN_FILE) if where else MAIN_FILE
                if error["type"] == "extra_forbidden":
                    message = "unknown key (a typo?); see docs/configuration.md for the keys this section takes"
                problems.append(f"{file}: {_format_loc(where)}: {message}")
        raise ConfigError(problems) from None


def plugin_settings(config: Config, name: str, model: type[M]) -> M:
    """Validate the `plugins.<name>` section with `model`; problems name the file and the key path."""
    try:
        return model.model_validate(config.plugins.get(name) or {})
    except ValidationError as exc:
        file = config.source_of("plugins")
        problems = []
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = f"unknown key (a typo?); see docs/configuration.md, section plugins.{name}"
            problems.append(f"{file}: {_format_loc(('plugins', name, *error['loc']))}: {message}")
        raise ConfigError(problems) from None


def unknown_channels(config: Config, channels: set[str]) -> dict[str, list[str]]:
    """Channels the configuration names that no loaded plugin provides (a typo, or a plugin not installed): a
    rule on one never matches, a capacity or timeout for it never applies. {name: ['file: key path', ...]}."""
    def names(value: str | list[str] | None) -> list[str]:
        return [] if value is None else [value] if isinstance(value, str) else list(value)

    found: list[tuple[str, str, str]] = []
    for i, rule in enumerate(config.routing.rules):
        found += [("routing", f"routing.rules[{i}].when.channel", n) for n in names(rule.when.channel)]
    for policy_name, policy in config.sla_policies.items():
        for i, override in enumerate(policy.overrides):
            found += [("sla_policies", f"sla_policies.{policy_name}.overrides[{i}].when.channel", n)
                      for n in names(override.when.channel)]
    found += [("offers", f"offers.timeout.{n}", n) for n in config.offers.timeout if n != "default"]
    for i, agent in enumerate(config.agents):
        found += [("agents", f"agents[{i}].capacity.{n}", n) for n in agent.capacity if n != "default"]
    for line_name, line in config.lines.items():
        found += [("lines", f"lines.{line_name}.accounts[{i}].channel", ref.channel)
                  for i, ref in enumerate(line.accounts)]
    by_name: dict[str, list[str]] = {}
    for key, path, name in found:
        if name not in channels:
            by_name.setdefault(name, []).append(f"{config.source_of(key)}: {path}")
    return dict(sorted(by_name.items()))


def defaulted_secrets(config: Config) -> list[str]:
    """The environment variables of secrets that were not set, so that their configured default is in use
    (fine for the demo; in production, a shared default password or token is a hole)."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, Secret):
            if value.defaulted and value.env not in found:
                found.append(value.env)
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    walk(config)
    return found


def redacted(config: Config) -> dict[str, Any]:
    """The configuration as it may be printed: secrets appear only as the variable they come from."""
    return config.model_dump(mode="json")


__all__ = [
    "MAIN_FILE", "Config", "ConfigError", "Duration", "IntegrationConfig", "Model", "Secret", "load_config",
    "defaulted_secrets", "parse_duration", "unknown_channels", "plugin_settings", "redacted", "validate_config",
]
