"""Health and metrics: worker heartbeats (heartbeats.py), the Prometheus collector (metrics.py), and the /health/ and
/metrics views (views.py). Every fact is read from the database."""
