"""Bad and unknown ELECTRIC_* settings: one clear line, the variable and the rule, no secret."""

from __future__ import annotations

import pytest

from electric.cli import main
from service.settings import (
    InvalidSettings,
    load_settings,
    secret_fields,
    unknown_variables,
    unknown_variables_warning,
)

SECRET = "sk-live-7f3a9c"


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELECTRIC_API_KEYS", f"{SECRET},other-key-42")


def refusal(**overrides: object) -> str:
    with pytest.raises(InvalidSettings) as caught:
        load_settings(overrides)
    message = str(caught.value)
    assert SECRET not in message and "other-key-42" not in message
    assert "\n" not in message
    return message


def test_a_bad_number_names_the_variable_the_value_and_the_rule(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELECTRIC_MAX_QUEUE", "abc")
    message = refusal()
    assert message.startswith("ELECTRIC_MAX_QUEUE='abc': ") and "valid integer" in message


def test_a_cross_field_error_does_not_echo_the_whole_input(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # pydantic puts every input, the API keys among them, into a model validator's error
    # (input_value={'max_queue': '10', 'api_keys': '...'}): that is what leaked before.
    monkeypatch.setenv("ELECTRIC_MAX_QUEUE", "10")
    message = refusal()
    assert message == ("ELECTRIC_MAX_SENTENCES=256 exceeds ELECTRIC_MAX_QUEUE=10: a request "
                       "that large could never be admitted")


def test_bounds_and_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELECTRIC_VARIANT", "bf16")
    assert "ELECTRIC_VARIANT='bf16'" in refusal() and "'int8'" in refusal()
    monkeypatch.delenv("ELECTRIC_VARIANT")
    assert refusal(port=0, request_timeout_s=0) == (
        "ELECTRIC_PORT=0: Input should be greater than or equal to 1; "
        "ELECTRIC_REQUEST_TIMEOUT_S=0: Input should be greater than 0")


def test_a_secret_field_never_shows_its_value() -> None:
    assert "api_keys" in secret_fields()
    message = refusal(api_keys=[SECRET, 7])
    assert message.startswith("ELECTRIC_API_KEYS: ") and "not shown" in message


def test_overrides_are_named_by_their_flag() -> None:
    with pytest.raises(InvalidSettings, match=r"^--port=70000: "):
        load_settings({"port": 70000}, {"port": "--port"})


def test_electric_serve_prints_one_line_and_exits_2(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ELECTRIC_MAX_QUEUE", "10")
    assert main(["serve"]) == 2
    captured = capsys.readouterr()
    assert captured.err == ("electric serve: bad setting: ELECTRIC_MAX_SENTENCES=256 exceeds "
                            "ELECTRIC_MAX_QUEUE=10: a request that large could never be "
                            "admitted\n")
    assert SECRET not in captured.out + captured.err and "Traceback" not in captured.err


def test_unknown_variables_are_named_with_the_closest_known_one() -> None:
    environ = {"ELECTRIC_MAX_QUEU": "10", "electric_varient": "fp32", "ELECTRIC_ZZZ": "1",
               "ELECTRIC_PORT": "9000", "ELECTRIC_API_KEY": "k", "ELECTRIC_EVAL_DIR": "/x",
               "PATH": "/bin"}
    assert unknown_variables(environ) == [
        "ELECTRIC_MAX_QUEU (did you mean ELECTRIC_MAX_QUEUE?)", "ELECTRIC_ZZZ",
        "electric_varient (did you mean ELECTRIC_VARIANT?)"]
    assert unknown_variables_warning({"ELECTRIC_PORT": "1"}) is None


def test_every_command_warns_about_them_once(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ELECTRIC_MAX_QUEU", "10")
    monkeypatch.setenv("ELECTRIC_PORT", "0")  # stops serve before it starts
    assert main(["serve"]) == 2
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [("electric: warning: unknown environment variable, ignored: "
                         "ELECTRIC_MAX_QUEU (did you mean ELECTRIC_MAX_QUEUE?); the settings "
                         "are listed in service/settings.py")]
