"""The optional Prometheus endpoint: fleet gauges at scrape time, ping and incident hooks.

Import the modules themselves (`clawd.serve.metrics.server`, `clawd.serve.metrics.registry`): a
package that re-exports its own modules is an import cycle (see tests/test_import_cycles.py).
"""
