from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from backend.settings import DEFAULT_CONFIG, Settings, SettingsError, load_settings, with_overrides


def test_documented_defaults_equal_the_built_in_defaults() -> None:
    # config/labelloop.yaml documents every setting: it must name them all, with the same values.
    from_file = load_settings(environ={})
    assert from_file == Settings()
    documented = yaml.safe_load(DEFAULT_CONFIG.read_text())
    for section, model in Settings.model_fields.items():
        keys = set(type(getattr(Settings(), section)).model_fields)
        assert set(documented[section]) == keys, f"config/labelloop.yaml section {section}"
        assert model is not None


def test_layers_user_file_then_environment(tmp_path: Path) -> None:
    user = tmp_path / "mine.yaml"
    user.write_text("model:\n  backbone: small_cnn\n  batch_size: 8\nserver:\n  port: 9191\n")
    settings = load_settings(
        user, environ={"LABELLOOP_SERVER__PORT": "9292", "LABELLOOP_MODEL__FINE_TUNE": "true"}
    )
    assert settings.model.backbone == "small_cnn"
    assert settings.model.batch_size == 8
    assert settings.model.fine_tune is True
    assert settings.server.port == 9292  # the environment wins over the file
    assert settings.label_studio.url == "http://127.0.0.1:8080"  # untouched default


def test_config_file_from_environment_variable(tmp_path: Path) -> None:
    user = tmp_path / "env.yaml"
    user.write_text("strategy:\n  batch_size: 7\n")
    settings = load_settings(environ={"LABELLOOP_CONFIG": str(user)})
    assert settings.strategy.batch_size == 7


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({"LABELLOOP_MODEL__BACKBONE": "resnet9000"}, ["model.backbone", "efficientnet_lite0"]),
        ({"LABELLOOP_SERVER__PORT": "70000"}, ["server.port", "65535"]),
        ({"LABELLOOP_LABEL_STUDIO__URL": "ftp://x"}, ["label_studio.url", "http"]),
        ({"LABELLOOP_MODEL__NOPE": "1"}, ["model.nope", "unknown"]),
        ({"LABELLOOP_STRATEGY__WEIGHTS": "{entropyy: 1}"}, ["strategy.weights", "entropyy"]),
        ({"LABELLOOP_STRATEGY__WEIGHTS": "{entropy: -1}"}, ["strategy.weights", ">= 0"]),
        ({"LABELLOOP_STRATEGY__FADE_AFTER": "{coverag: 5}"}, ["strategy.fade_after", "coverag"]),
        ({"LABELLOOP_STRATEGY__FADE_AFTER": "{coverage: 0}"}, ["strategy.fade_after", ">= 1"]),
        (
            {"LABELLOOP_STRATEGY__FADE_AFTER": "{self_confidence: 9}"},
            ["strategy.fade_after", "review signal"],
        ),
    ],
)
def test_bad_values_fail_naming_the_setting(environ: dict[str, str], names: list[str]) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(environ=environ)
    for name in names:
        assert name in str(err.value)


def test_secrets_are_not_echoed_in_errors() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(environ={"LABELLOOP_LABEL_STUDIO__TOKEN": "[not, a, string]"})
    assert "not, a, string" not in str(err.value)
    assert "label_studio.token" in str(err.value)


def test_unreadable_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings(bad, environ={})
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(SettingsError, match="mapping"):
        load_settings(listy, environ={})


def test_token_is_secret_and_overrides_keep_it() -> None:
    settings = load_settings(environ={"LABELLOOP_LABEL_STUDIO__TOKEN": "s3cret"})
    assert "s3cret" not in repr(settings)
    changed = with_overrides(settings, {"model": {"head": "mlp"}})
    assert changed.model.head == "mlp"
    assert changed.label_studio.token is not None
    assert changed.label_studio.token.get_secret_value() == "s3cret"
    with pytest.raises(SettingsError, match=r"model\.head"):
        with_overrides(settings, {"model": {"head": "transformer"}})


def test_sqlite_url_defaults_under_data_dir(tmp_path: Path) -> None:
    settings = load_settings(environ={"LABELLOOP_STORE__DATA_DIR": str(tmp_path)})
    assert settings.store.url == f"sqlite:///{tmp_path.resolve()}/labelloop.db"
    pg = load_settings(environ={"LABELLOOP_STORE__DATABASE_URL": "postgresql://u@h/db"})
    assert pg.store.url == "postgresql://u@h/db"
