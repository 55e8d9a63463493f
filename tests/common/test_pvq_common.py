"""pvq_common: the shared strict config loader (pvq_common.config) and the loopback-only
environment (pvq_common.env)."""

import pytest

from pvq_common.config import ConfigError

def test_loader_is_strict_and_names_every_path():
    from dataclasses import dataclass, field

    from pvq_common.config import from_dict

    @dataclass
    class Inner:
        n: int = 1
        x: float = 0.5
        flag: bool = False
        names: list[str] = field(default_factory=list)
        grid: list[list[int]] = field(default_factory=list)
        path: str | None = None

    @dataclass
    class Outer:
        inner: Inner = field(default_factory=Inner)

    cfg = from_dict(Outer, {"inner": {"n": 3, "x": "1e-5", "grid": ((1, 2),), "path": None}})
    assert (cfg.inner.n, cfg.inner.x, cfg.inner.grid, cfg.inner.flag) == (3, 1e-5, [[1, 2]], False)
    assert isinstance(cfg.inner, Inner) and from_dict(Outer, {}).inner == Inner()
    bad = {"inner.n: expected an integer, got True": {"n": True},
           "inner.n: expected an integer, got '3'": {"n": "3"},
           "inner.flag: expected true/false, got 1": {"flag": 1},
           "inner.x: expected a number, got 'fast'": {"x": "fast"},
           "inner.names[1]: expected a string, got 2": {"names": ["a", 2]},
           "inner.grid[0][1]: expected an integer, got 'b'": {"grid": [[1, "b"]]},
           "inner.path: expected a string, got 5": {"path": 5},
           "inner.nn: unknown key; known keys here: n, x, flag, names, grid, path": {"nn": 1}}
    for message, inner in bad.items():
        with pytest.raises(ConfigError) as e:
            from_dict(Outer, {"inner": inner})
        assert str(e.value) == message
    with pytest.raises(ConfigError, match="^inner: expected a mapping, got int 3$"):
        from_dict(Outer, {"inner": 3})
    with pytest.raises(ConfigError) as e:  # every error, not only the first
        from_dict(Outer, {"inner": {"n": "a", "zz": 0}})
    assert "inner.n: expected an integer, got 'a'" in str(e.value) and "inner.zz: unknown key" in str(e.value)


def test_overrides_and_base_files(tmp_path):
    from pvq_common.config import apply_overrides, read_yaml

    (tmp_path / "base.yaml").write_text("train:\n  steps: 5\n  lr: 1.0e-3\nname: a\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain:\n  steps: 7\n")
    data = apply_overrides(read_yaml(tmp_path / "child.yaml"), ["train.seed=3", "model.encoder.fft=false"])
    assert data == {"train": {"steps": 7, "lr": 1e-3, "seed": 3}, "name": "a", "model": {"encoder": {"fft": False}}}
    with pytest.raises(ConfigError, match="expected key.path=value"):
        apply_overrides({}, ["train.seed"])
    with pytest.raises(ConfigError, match=r"name\.x: name is not a section"):
        apply_overrides({"name": "a"}, ["name.x=1"])


def test_local_env_is_returned_not_applied(monkeypatch):
    import os

    from pvq_common.env import LOCAL_ENV, is_remote, local_env, missing_local_env, scoped_env

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")
    monkeypatch.delenv("NO_PROXY", raising=False)
    before = dict(os.environ)
    env = local_env()
    assert env["RAY_USAGE_STATS_ENABLED"] == "1" and env["NO_PROXY"] == "127.0.0.1,localhost"  # the caller wins
    assert local_env({}) == LOCAL_ENV and local_env({}, keys=("RAY_AUTH_MODE",)) == {"RAY_AUTH_MODE": "disabled"}
    assert "RAY_USAGE_STATS_ENABLED" not in missing_local_env() and "NO_PROXY" in missing_local_env()
    assert dict(os.environ) == before
    with scoped_env({"NO_PROXY": "x", "RAY_USAGE_STATS_ENABLED": "0"}):
        assert os.environ["NO_PROXY"] == "x" and os.environ["RAY_USAGE_STATS_ENABLED"] == "0"
    assert dict(os.environ) == before
    assert is_remote("s3://b/k") and is_remote("http://h/x") and not is_remote("file:///x") and not is_remote("a/b")
