"""Secure aggregation in the round protocol (docs/privacy.md "How the pieces fit", decision 35).

- ``phases``: a secagg round's tasks and steps: advertise -> share -> train (masked) -> unmask.
- ``payload``: what a secagg task (or a secagg round's train task) carries to its site.
- ``submit``: a site's answer to a secagg step (SubmitSecAgg), stored for restart.
- ``masked_sum``: the modular fold of masked updates, and the unmasking at commit.
"""
