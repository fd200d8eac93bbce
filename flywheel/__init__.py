"""Wiring: the one place that assembles serving and learning (app factory, CLI, demo)."""
