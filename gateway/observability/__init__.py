"""Prometheus metrics (`metrics.py`, served at GET /metrics) and OpenTelemetry traces (`tracing.py`).

Metrics are counted per finished call in the gateway's sink (one place, off the response's
critical work) and rendered only when scraped; gauges (writer queue, spill file, leadership) are
read at scrape time. Traces are off unless `[observability] tracing = true`.
"""
