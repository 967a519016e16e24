"""Business policy: what happens to a message between its acceptance and its delivery.

A pipeline of stages (a keyword filter, in-process message filters, the
application's publish hook) screens each batch an actor accepted; hooks tell
the application about connects, offline messages and presence. Pure logic with
the clock and the HTTP agent injected: actors use it, it uses nothing above.
"""

from o2obroker.policy.pipeline import (
    REJECTED,
    UNAVAILABLE,
    Candidate,
    IMessageFilter,
    Pipeline,
    Rejected,
)

__all__ = ["REJECTED", "UNAVAILABLE", "Candidate", "IMessageFilter", "Pipeline", "Rejected"]
