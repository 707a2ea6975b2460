"""Reconcile: pending trades brought in line with Binance per account (pending.py), under one lease per account
(leases.py), with the run's report (reports.py), the audit cadence of healthy streams (audit.py) and the reports'
retention (runs.py)."""
