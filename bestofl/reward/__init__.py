"""Outcome reward models: training (`bestofl train-rm`) and scoring.

A trained reward model is a Hugging Face folder plus RM_INFO_FILE, what train-rm knows about
it (its training and held-out questions, score statistics, config); `bestofl evaluate` reads
it through `rm_stats=` to leave the training questions out.
"""
RM_INFO_FILE = "bestofl_rm.json"
