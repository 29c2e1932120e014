"""Settings from ELECTRIC_* variables: parsing, bounds, redaction."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.settings import Settings, default_artifact


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELECTRIC_VARIANT", "int8")
    monkeypatch.setenv("ELECTRIC_MAX_BATCH_TOKENS", "2048")
    monkeypatch.setenv("ELECTRIC_API_KEYS", "alpha, beta,")
    s = Settings()
    assert s.variant == "int8" and s.max_batch_tokens == 2048
    assert [k.get_secret_value() for k in s.api_keys] == ["alpha", "beta"]


def test_default_artifact_is_the_embedded_model() -> None:
    assert Settings().artifact == default_artifact()
    assert default_artifact().parts[-2:] == ("models", "electric-minilm")


def test_secrets_never_reach_the_log() -> None:
    s = Settings(api_keys="secret-one,secret-two")  # type: ignore[arg-type]
    assert "secret" not in str(s.redacted()) and "secret" not in repr(s)


@pytest.mark.parametrize("field, value", [
    ("variant", "bf16"), ("port", 0), ("max_batch_tokens", 0), ("request_timeout_s", 0),
    ("max_sentences", 10_000), ("no_such_field", 1)])
def test_bad_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        Settings(**{field: value})
