"""The operators' desk as operators read it: money without trailing zeros, times in the operator's time zone with the
exchange's milliseconds on hover, statuses as badges, the admin's home page panels and the exposure page per
account. No models: it reads trades and reconciliation, and its actions call their services and tasks."""
