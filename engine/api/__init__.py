"""The local HTTP API and the Alertmanager receiver, served by the engine (console or headless)."""
