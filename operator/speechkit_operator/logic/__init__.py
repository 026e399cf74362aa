"""Pure decisions: functions of their arguments only.

Nothing in this package performs I/O, reads the clock or the environment, or imports kopf. Callers fetch
bytes, specs and API answers and hand them in; these modules say what they mean.
"""
