"""Alerting: what the monitor actor (``actors/monitor.py``) keeps and tells.

- ``records``: the rows it stores (error log entries, alerts, notification
  deliveries) and their levels, severities and states;
- ``settings``: the ``[monitoring]`` section (retention, rule thresholds, alerters);
- ``window``: sliding windows of outcomes, the samples the rules read;
- ``rules``: the built-in rules, pure functions of what the monitor observed;
- ``firing``: pending -> firing -> resolved per fingerprint (``for``, repeat,
  ``keep_firing_for``), pure and clock-driven;
- ``payloads`` and ``alerters``: what each channel sends (Alertmanager's webhook
  JSON, Slack Block Kit, email) and how;
- ``delivery``: the per-channel loop over persisted deliveries, with its backoff.

Nothing here imports the store's backend or an actor: the monitor wires them.
"""
