"""voxpipe server: config, session, HTTP routes, metrics, lifecycle and CLI."""
