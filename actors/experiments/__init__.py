"""Experiments: A/B and multivariate tests of models, prompts and parameters.

``model.py`` holds the data every part shares (an experiment, its variants and
metrics, an assignment, one job's observation, and the results' shape); the
assignment, the statistics, the bandit and the actor that re-weights live beside it.
"""
