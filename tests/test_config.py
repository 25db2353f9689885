"""Operator configuration: validated before anything starts, errors that name file, key and fix, secrets hidden."""
from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from router.config import ConfigError, load_config, parse_duration, redacted

ROOT = Path(__file__).resolve().parents[1]


def write(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(text, encoding="utf-8")


def problems(folder: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(folder)
    return info.value.problems


def test_example_deployment_is_valid():
    config = load_config(ROOT / "config")
    assert config.instance.case_ref_prefix == "TK"
    assert config.directory == (ROOT / "config").resolve()


def test_top_level_keys_may_live_in_several_files(tmp_path):
    write(tmp_path, "switchboard.yaml", "instance: {name: Acme}\n")
    write(tmp_path, "integrations.yaml", "integrations:\n  - name: crm\n    token: {$env: X_T, default: t}\n")
    config = load_config(tmp_path)
    assert config.integrations[0].name == "crm"
    assert config.source_of("integrations") == "integrations.yaml"


def test_a_key_defined_in_two_files_is_refused(tmp_path):
    write(tmp_path, "switchboard.yaml", "instance: {name: A}\n")
    write(tmp_path, "more.yaml", "instance: {name: B}\n")
    assert problems(tmp_path) == ["more.yaml: instance: already defined in switchboard.yaml; keep it in one file"]


def test_errors_name_the_file_and_key_path(tmp_path):
    write(tmp_path, "switchboard.yaml", "threading: {reopen_window: soon}\nserver: {port: 99999}\n")
    write(tmp_path, "integrations.yaml", "integrations:\n  - name: crm\n    token: {$env: X_T, default: t}\n"
                                         "    scopes: [ingest, delete]\n")
    found = problems(tmp_path)
    assert "switchboard.yaml: threading.reopen_window: not a duration: 'soon'; write e.g. 90s, 15m, 72h or 2d" in found
    assert any(p.startswith("switchboard.yaml: server.port:") for p in found)
    assert any(p.startswith("integrations.yaml: integrations[0].scopes[1]:") for p in found)


def test_unknown_keys_are_typos_not_silence(tmp_path):
    write(tmp_path, "switchboard.yaml", "instance: {nmae: Acme}\n")
    [problem] = problems(tmp_path)
    assert problem.startswith("switchboard.yaml: instance.nmae: unknown key")


def test_invalid_yaml_points_at_the_line(tmp_path):
    write(tmp_path, "switchboard.yaml", "instance:\n  name: [unclosed\n")
    [problem] = problems(tmp_path)
    assert problem.startswith("switchboard.yaml: line 3") and "not valid YAML" in problem


def test_missing_folder_or_main_file_is_explained(tmp_path):
    assert "not a directory" in problems(tmp_path / "nope")[0]
    assert "no switchboard.yaml" in problems(tmp_path)[0]


def test_secrets_come_only_from_the_environment_and_are_never_printed(tmp_path, monkeypatch):
    write(tmp_path, "switchboard.yaml", "integrations:\n  - name: crm\n    token: plain-text-token\n")
    assert "secrets come from the environment only" in problems(tmp_path)[0]
    write(tmp_path, "switchboard.yaml", "integrations:\n  - name: crm\n    token: {$env: CRM_TOKEN}\n")
    assert "environment variable CRM_TOKEN is not set" in problems(tmp_path)[0]
    monkeypatch.setenv("CRM_TOKEN", "s3cr3t-value")
    config = load_config(tmp_path)
    assert config.integrations[0].token.get() == "s3cr3t-value"
    printed = json.dumps(redacted(config)) + repr(config) + str(config)
    assert "s3cr3t-value" not in printed and "CRM_TOKEN" in printed


def test_two_integrations_may_not_share_a_token(tmp_path):
    write(tmp_path, "switchboard.yaml", "integrations:\n"
                                        "  - {name: a, token: {$env: T1, default: same}}\n"
                                        "  - {name: b, token: {$env: T2, default: same}}\n")
    assert problems(tmp_path) == [
        "switchboard.yaml: integrations: two integrations share a token; give each its own"]


def test_templates_are_checked_for_placeholders(tmp_path):
    write(tmp_path, "switchboard.yaml", "acknowledgements:\n  templates:\n    new_case: {en: 'Hi {customer}'}\n")
    assert any("unknown placeholder(s) ['customer']" in p for p in problems(tmp_path))
    write(tmp_path, "switchboard.yaml", "acknowledgements:\n  templates:\n    new_case: {en: 'Case {}'}\n")
    assert any("unknown placeholder(s) ['']" in p for p in problems(tmp_path))
    write(tmp_path, "switchboard.yaml", "acknowledgements:\n  templates:\n    new_case: {en: 'Case {ref'}\n")
    assert any("literal braces" in p for p in problems(tmp_path))


def test_overriding_one_template_keeps_the_others(tmp_path):
    write(tmp_path, "switchboard.yaml", "acknowledgements:\n  templates:\n    new_case: {en: 'Case {ref} opened'}\n")
    templates = load_config(tmp_path).acknowledgements.templates
    assert templates["new_case"]["en"] == "Case {ref} opened"
    assert templates["new_case"]["it"].startswith("Grazie") and templates["reopened"]["en"].startswith("Your case")


def test_a_new_language_needs_its_texts_and_the_error_names_the_file(tmp_path):
    write(tmp_path, "switchboard.yaml", "instance: {languages: [en, fr]}\n")
    write(tmp_path, "acknowledgements.yaml", "acknowledgements:\n  templates:\n    new_case: {fr: 'Dossier {ref}'}\n")
    assert problems(tmp_path) == [
        "acknowledgements.yaml: acknowledgements.templates.reopened: no text for languages ['fr']"]


def test_postgres_backend_needs_a_dsn(tmp_path):
    write(tmp_path, "switchboard.yaml", "store: {backend: postgres}\n")
    assert problems(tmp_path) == ["switchboard.yaml: store: backend is postgres but store.postgres.dsn is not set"]


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("15m", 900), ("72h", 259200), ("2d", 172800),
                                               ("1h30m", 5400), (45, 45)])
def test_durations(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("bad", ["", "h", "3 weeks", "-5m", True])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)
