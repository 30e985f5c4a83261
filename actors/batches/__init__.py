"""Batches: many generations submitted, run, repaired and read back as one unit.

``model.py`` holds the data (a batch, its options, its state and its items'
outcomes); the batch actor that releases items into the scheduler lives beside it.
"""
