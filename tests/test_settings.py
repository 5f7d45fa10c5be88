"""Settings: seed defaults, env overrides, keyword overrides, validation, no password in repr."""

from __future__ import annotations

import pytest

from mediaq.errors import ConfigError
from mediaq.runtime.settings import Settings


def test_seed_defaults():
    s = Settings.load(env={})
    assert (s.max_tries, s.job_timeout, s.retry_backoff, s.max_jobs) == (3, 300, 5, 10)
    assert (s.queue_db, s.cache_db, s.thumb_size) == (1, 0, (250, 200))
    assert s.iqdb_url is None and s.serializer == "msgpack"


def test_env_then_keyword_order():
    env = {"MEDIAQ_MAX_JOBS": "4", "MEDIAQ_JOB_MODULES": "a.b, c", "MEDIAQ_IQDB_URL": "http://x:5588"}
    s = Settings.load(env=env)
    assert s.max_jobs == 4 and s.job_modules == ("a.b", "c") and s.iqdb_url == "http://x:5588"
    assert Settings.load(env=env, max_jobs=7).max_jobs == 7


def test_to_env_round_trips():
    s = Settings.load(env={}, max_jobs=2, job_modules=("x",), redis_url="redis://:p@h:1")
    assert Settings.load(env=s.to_env()) == s


@pytest.mark.parametrize("kw", [{"max_jobs": 0}, {"serializer": "json"}, {"queue_db": 99}, {"nope": 1}])
def test_invalid_settings_are_clear_errors(kw):
    with pytest.raises(ConfigError):
        Settings.load(env={}, **kw)


def test_bad_env_value_names_the_variable():
    with pytest.raises(ConfigError, match="MEDIAQ_MAX_TRIES"):
        Settings.load(env={"MEDIAQ_MAX_TRIES": "three"})


def test_repr_never_shows_password():
    s = Settings.load(env={}, redis_url="redis://:hunter2@host:6379/1",
                      ratings_url="postgresql://u:secret@db/x")
    assert "hunter2" not in repr(s) and "secret" not in repr(s) and "***" in repr(s)


def test_default_storage_does_not_depend_on_the_working_folder(tmp_path, monkeypatch):
    from mediaq.runtime.settings import Settings

    monkeypatch.chdir(tmp_path)  # a kernel started in notebooks/ must not write into the checkout
    s = Settings.load(env={"MEDIAQ_STATE_DIR": str(tmp_path / "state")})
    assert s.storage == str(tmp_path / "state" / "media")
    assert Settings.load(env={"MEDIAQ_STORAGE": "out"}).storage == str(tmp_path / "out")  # an explicit one is kept
