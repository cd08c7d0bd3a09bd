"""Recipes: how a particular model is made from phi4r's parts (tasks, trainers, evals).

A recipe owns its training formats (prompts, traces, curricula, tokenizer choices); the benchmark
tasks and the trainers know nothing of it. `nano/` makes the shipped nano model.
"""
