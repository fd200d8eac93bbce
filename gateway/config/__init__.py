"""Configuration: the typed schema of config.toml and its one loader."""
