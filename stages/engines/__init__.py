"""Stage backends: test engines, the embedded offline stack, and HTTP model services."""
