"""podwarden agent: CLI, config, transports, podman vocabulary, watcher, probes, testbed."""
