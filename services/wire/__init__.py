"""The records and primitives that cross topics.

What every stage, the agent and the demo must spell the same way, defined once:

* :mod:`.banks`: PCR banks as records name them (the ``hostgate.HashAlg`` symbols) and as
  hostgate does (the bank names of :mod:`services.tpm.algorithms`).
* :mod:`.time`: ``timestamp-millis`` fields as milliseconds since the epoch.
* :mod:`.coords`: ``hostgate.Coordinates``, where a record lives.
* :mod:`.ids`: deterministic ids (derived from what a record was made from, never random) and
  the canonical digest of a decoded record.

Pure: no Kafka, no clock (but :func:`.time.now_ms`, for the agent and the CLIs), no file.
"""
