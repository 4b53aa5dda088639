"""The default export configs, one TOML per family (``deploykit export`` reads ``<family>.toml``).

This top-level folder is the only copy: pyproject.toml installs it as the package ``deploykit.export_configs``
and :func:`deploykit.export.config.default_config` reads it with ``importlib.resources``, so editable
installs, ``pip install .`` and wheels all find it.
"""
