"""Sparse autoencoders and crosscoders for model diffing: training, metrics, comparison, export."""
