"""Failure detection: how ping results, heartbeat history and other evidence become a status.

Pure modules (plain values in, plain values out): ``accrual`` (the phi-accrual
estimator), ``suspicion`` (phi or missed pings against the thresholds), ``rules``
(evidence and the rule table), ``flap`` (Nagios flapping), ``guard`` (self-health);
and ``indirect``, the one with I/O (other peers probe a suspect).

They sit below the fleet view (clawd/fleetview.py builds on them); what reads or steps
a view (clawd/reconciler.py, clawd/partition.py, clawd/transitions.py,
clawd/election.py, clawd/explain.py) lives beside it, so that this package imports
nothing that imports it back.
"""
