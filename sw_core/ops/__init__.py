"""Operations: counters, latency metrics, the monitor, the dashboard, health checks and the
Prometheus collector."""
