"""The self-hosted, SpeechKit-compatible recognition service (``speechkit-operator serve``).

:mod:`~speechkit_operator.selfhosted.decoding` turns the bytes of an audio object into one 16 kHz, 16-bit
PCM array per channel; :mod:`~speechkit_operator.selfhosted.engines` turns such an array into utterances
with word timings, using an embedded open-source recogniser (PocketSphinx by default) that works offline.
"""
