"""Speech recognition API clients behind one interface (:class:`SpeechClient`)."""
