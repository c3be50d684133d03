"""torch's scheduler ``state_dict()`` for a functional optimizer with one schedule
per param group.

:meth:`fo.schedules.Schedule.torch_state_dict` writes the state of a torch scheduler
over an optimizer with one param group. torch keeps one entry per group in
``base_lrs`` and ``_last_lr`` (and ``lr_lambdas`` for LambdaLR); a scheduler over
several groups that loads a state with one entry stops at its next ``step()`` with
``ValueError: zip() argument 2 is shorter than argument 1``. This joins the
groups' states into the state of one scheduler over all of them.
"""

from __future__ import annotations

PER_GROUP = ("base_lrs", "_last_lr", "lr_lambdas")


def scheduler_state_dict(schedules, count):
    """The state of torch's scheduler over one param group per schedule (in the
    groups' order), each at the optimizer's step count ``count``."""
    return _joined([schedule.torch_state_dict(int(count)) for schedule in schedules])


def _joined(states):
    joined = dict(states[0])
    for key in PER_GROUP:
        if key in joined:
            joined[key] = [value for state in states for value in state[key]]
    if "_schedulers" in joined:
        joined["_schedulers"] = [
            _joined(list(children))
            for children in zip(*(state["_schedulers"] for state in states))
        ]
    return joined
