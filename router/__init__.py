"""Switchman's service: HTTP API, config, provider registry, adapters, jobs, CLI, sandbox."""

__all__: list[str] = []
