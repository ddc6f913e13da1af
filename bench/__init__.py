"""Benchmarks: voxpipe side by side with pipecat (``make bench``); see docs/performance.md."""
