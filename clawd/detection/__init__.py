"""Failure detection: how ping results, heartbeat history and other evidence become a status.

Pure modules (plain values in, plain values out): ``accrual`` (phi-accrual and threshold
detectors), ``rules`` (evidence and the rule table), ``flap`` (Nagios flapping),
``partition`` (many peers dropping together), ``guard`` (self-health), ``explain``
(`clawd status --why`); and ``indirect``, the one with I/O (other peers probe a suspect).
"""
