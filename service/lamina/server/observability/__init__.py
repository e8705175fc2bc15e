"""What an operator sees of each request besides the metrics: its request id and access log line
(requests.py, logs.py) and its OpenTelemetry trace (tracing.py). docs/observability.md."""
