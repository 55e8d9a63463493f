"""What the data pipeline and the model both need, in one small torch-free package.

- :mod:`pvq_common.config`: the strict YAML config loader (``base:`` files, ``key.path=value``
  overrides, pydantic validation of a dataclass tree, :class:`~pvq_common.config.ConfigError`).
- :mod:`pvq_common.paper`: the paper's training scales and frame counts.
- :mod:`pvq_common.media`: the video and image file extensions the project reads.
- :mod:`pvq_common.env`: the loopback-only environment and :func:`~pvq_common.env.is_remote`.

It imports no torch, ray, prefect or mlflow, so ``data_prep`` can use it without pulling in the model.
"""
