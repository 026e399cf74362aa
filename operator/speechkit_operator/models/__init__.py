"""Pydantic models: the TranscriptionJob resource, audio facts, and recognition results."""
