"""voxpipe stages: VAD, ASR, LLM and TTS kinds, their backends (engines) and the registry."""
