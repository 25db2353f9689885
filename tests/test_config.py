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


def test_a_key_written_twice_in_one_file_is_refused_with_both_lines(tmp_path):
    write(tmp_path, "switchboard.yaml", "server: {port: 8080}\ninstance: {name: A}\nserver: {port: 9999}\n")
    [problem] = problems(tmp_path)
    assert problem.startswith("switchboard.yaml: line 3") and "'server' is written twice (first on line 1)" in problem


def test_values_yaml_cannot_hold_and_yml_files_are_explained(tmp_path):
    write(tmp_path, "switchboard.yaml", "calendars:\n  office: {holidays: [2026-02-30]}\n")
    write(tmp_path, "accounts.yml", "accounts: []\n")
    found = problems(tmp_path)
    assert "accounts.yml: Switchboard reads *.yaml files only; rename it to accounts.yaml" in found
    assert any(p.startswith("switchboard.yaml: a value cannot be read: day is out of range") for p in found)
    (tmp_path / "accounts.yml").unlink()
    (tmp_path / "old.yaml").mkdir()
    assert any(p.startswith("old.yaml: cannot be read") for p in problems(tmp_path))


@pytest.mark.parametrize("default, problem", [
    ("", "its default is empty or not text"), ("null", "its default is empty or not text"),
    ("[a, b]", "its default is empty or not text"), ("''", "its default is empty or not text")])
def test_an_empty_secret_default_is_refused_not_turned_into_text(tmp_path, default, problem):
    write(tmp_path, "switchboard.yaml", f"integrations:\n  - name: crm\n    token: {{$env: SB_UNSET_X, default: {default}}}\n")
    assert any(problem in p for p in problems(tmp_path))


def test_a_secret_set_but_empty_is_refused_and_a_default_in_use_is_reported(tmp_path, monkeypatch):
    from router.config import defaulted_secrets

    write(tmp_path, "switchboard.yaml", "integrations:\n  - name: crm\n    token: {$env: SB_EMPTY_T, default: demo}\n")
    assert defaulted_secrets(load_config(tmp_path)) == ["SB_EMPTY_T"]
    monkeypatch.setenv("SB_EMPTY_T", "")
    assert any("SB_EMPTY_T is set but empty" in p for p in problems(tmp_path))
    monkeypatch.setenv("SB_EMPTY_T", "a-real-token")
    assert defaulted_secrets(load_config(tmp_path)) == []


def test_an_account_password_too_short_is_refused_without_showing_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SB_SHORT_PW", "abc12")
    write(tmp_path, "switchboard.yaml", "accounts:\n  - {id: pia, name: Pia, password: {$env: SB_SHORT_PW}}\n")
    [problem] = problems(tmp_path)
    assert problem.startswith("switchboard.yaml: accounts[0].password:") and "fewer than 8" in problem
    assert "abc12" not in problem


@pytest.mark.parametrize("value", ["9999999999d", "367d", "1.0e+20", ".inf"])
def test_durations_past_a_year_are_typos(tmp_path, value):
    write(tmp_path, "switchboard.yaml", f"threading: {{reopen_window: {value}}}\n")
    [problem] = problems(tmp_path)
    assert problem.startswith("switchboard.yaml: threading.reopen_window:") and "366d" in problem


def test_survey_texts_are_checked_for_placeholders_everywhere(tmp_path):
    write(tmp_path, "switchboard.yaml", "csat:\n  templates: {en: 'Hi {name}, rate {ref}'}\n")
    assert any("csat.templates" in p and "unknown placeholder(s) ['name']" in p for p in problems(tmp_path))
    write(tmp_path, "switchboard.yaml", "csat:\n  lines: {partner: {templates: {en: 'Rate us {'}}}\n")
    assert any("csat.lines.partner.templates" in p and "literal braces" in p for p in problems(tmp_path))


def test_tiers_once_each_and_a_known_phone_region(tmp_path):
    write(tmp_path, "switchboard.yaml", "tiers: [L1, L2, L1, L3]\ninstance: {default_region: XX}\n")
    found = problems(tmp_path)
    assert any(p.startswith("switchboard.yaml: tiers:") and "repeated: ['L1']" in p for p in found)
    assert any(p.startswith("switchboard.yaml: instance.default_region:") and "'XX'" in p for p in found)


def test_a_misspelt_channel_is_reported(tmp_path):
    from router.config import unknown_channels

    write(tmp_path, "switchboard.yaml", "teams: {general: {tier: L1}}\n")
    write(tmp_path, "routing.yaml", "routing:\n  rules:\n    - name: mail\n      when: {channel: emial}\n"
                                    "      route: {team: general}\n  default: {team: general}\n")
    found = unknown_channels(load_config(tmp_path), {"api", "email"})
    assert found == {"emial": ["routing.yaml: routing.rules[0].when.channel"]}


def test_yaml_anchors_and_merge_keys_still_work(tmp_path):
    write(tmp_path, "switchboard.yaml", "teams:\n  general: &team {tier: L1}\n  billing:\n    <<: *team\n    tier: L2\n")
    config = load_config(tmp_path)
    assert config.teams["general"].tier == "L1" and config.teams["billing"].tier == "L2"
