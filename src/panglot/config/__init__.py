"""Configs are nested dataclasses loaded strictly from YAML with dotted CLI overrides.

An unknown or mistyped key is an error that names it, suggests the closest valid key and lists the valid
ones; every error in a config is reported at once, not the first only.
"""

from panglot.config.loader import ConfigError, from_dict, load_config, merge_dicts, parse_overrides, to_dict

__all__ = ["ConfigError", "from_dict", "load_config", "merge_dicts", "parse_overrides", "to_dict"]
