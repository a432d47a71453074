"""The parts of the training loop that are not the loop (:mod:`freelabel.engine`): the budget clock,
what a run shows while it trains, and the online evaluation. Schedules are in :mod:`freelabel.schedules`,
beside the methods that use them too."""
