import pytest
from pydantic import ValidationError

from shared.db import split_sql
from shared.ddl_history import OUTBOX_0001
from shared.settings import ApiSettings


def test_production_refuses_the_published_default_secrets(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("APP_ENV", "prod")
    monkeypatch.delenv("ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("CODE_ENCRYPTION_KEYS", raising=False)
    monkeypatch.delenv("CODE_FINGERPRINT_KEY", raising=False)
    with pytest.raises(
        ValidationError, match="ADMIN_TOKEN, CODE_ENCRYPTION_KEYS, CODE_FINGERPRINT_KEY"
    ):
        ApiSettings()


def test_production_starts_with_secrets_of_its_own(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("APP_ENV", "prod")
    monkeypatch.setenv("ADMIN_TOKEN", "x" * 40)
    monkeypatch.setenv("CODE_ENCRYPTION_KEYS", "k9:" + "B" * 43 + "=")
    monkeypatch.setenv("CODE_FINGERPRINT_KEY", "C" * 43 + "=")
    assert ApiSettings().app_env == "prod"


def test_an_unset_app_env_is_production(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("APP_ENV", raising=False)
    monkeypatch.delenv("ADMIN_TOKEN", raising=False)
    with pytest.raises(ValidationError, match=r"APP_ENV unset or prod.*ADMIN_TOKEN"):
        ApiSettings()


def test_dev_starts_with_defaults(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("APP_ENV", "dev")
    monkeypatch.delenv("ADMIN_TOKEN", raising=False)
    assert ApiSettings().decision_window_ms == 500


@pytest.mark.parametrize(
    ("processes", "limit", "share"), [("1", "256", 256), ("2", "256", 128), ("3", "256", 86)]
)
def test_the_in_flight_limit_is_the_hosts_split_over_the_api_processes(
    monkeypatch: pytest.MonkeyPatch, processes: str, limit: str, share: int
):
    """Two api processes must not admit twice what inventory decides in the window."""
    monkeypatch.setenv("APP_ENV", "dev")
    monkeypatch.setenv("API_PROCESSES", processes)
    monkeypatch.setenv("API_MAX_IN_FLIGHT", limit)
    assert ApiSettings().max_in_flight_per_process == share


def test_authentication_cannot_take_the_whole_pool_nor_cache_past_5_seconds(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("APP_ENV", "dev")
    monkeypatch.setenv("DB_POOL_SIZE", "4")
    monkeypatch.setenv("API_AUTH_MAX_LOOKUPS", "4")
    with pytest.raises(ValidationError, match=r"API_AUTH_MAX_LOOKUPS \(4\) must be below"):
        ApiSettings()
    monkeypatch.setenv("API_AUTH_MAX_LOOKUPS", "3")
    assert ApiSettings().auth_max_lookups == 3
    monkeypatch.setenv("API_AUTH_CACHE_TTL_S", "30")
    with pytest.raises(ValidationError, match="API_AUTH_CACHE_TTL_S"):
        ApiSettings()


def test_sql_scripts_split_outside_dollar_quoted_bodies():
    statements = split_sql(OUTBOX_0001)
    assert len(statements) == 5
    function = next(s for s in statements if s.startswith("CREATE FUNCTION"))
    assert "pg_notify('outbox', ''); RETURN NULL; END $$" in function


def test_sql_comments_with_semicolons_do_not_split_statements():
    script = "-- one; two\nCREATE TABLE t (a int); -- trailing; note\nSELECT 1;"
    assert split_sql(script) == ["CREATE TABLE t (a int)", "SELECT 1"]
